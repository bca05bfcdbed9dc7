package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
)

// kmsRequest holds the fields of every request served.
type kmsRequest struct {
	KeyId                        string
	KeySpec                      string
	NumberOfBytes                *int
	EncryptionContext            map[string]string
	Plaintext                    []byte
	CiphertextBlob               []byte
	SourceKeyId                  string
	SourceEncryptionContext      map[string]string
	DestinationKeyId             string
	DestinationEncryptionContext map[string]string
}

// parseRequest decodes a request body. It is encoding/json's Unmarshal
// into kmsRequest for the shapes KMS requests have (an object of strings,
// base64 strings, string maps, string arrays, numbers, booleans), in a
// third of the CPU: Unmarshal validated the whole body first and then
// walked it again by reflection, which was an eighth of the endpoint's
// CPU per call. Unknown fields are skipped; a body that is not JSON is an
// error. Unlike Unmarshal it matches field names exactly, as KMS does.
// TestParseRequest checks it against Unmarshal.
func parseRequest(b []byte) (kmsRequest, error) {
	p := &parser{b: b}
	var r kmsRequest
	p.ws()
	p.expect('{')
	p.ws()
	if p.peek() == '}' {
		p.i++
	} else {
		for p.err == nil {
			p.ws()
			name := p.str()
			p.ws()
			p.expect(':')
			p.ws()
			switch name {
			case "KeyId":
				r.KeyId = p.str()
			case "KeySpec":
				r.KeySpec = p.str()
			case "SourceKeyId":
				r.SourceKeyId = p.str()
			case "DestinationKeyId":
				r.DestinationKeyId = p.str()
			case "NumberOfBytes":
				if !p.literal("null") {
					n := p.int()
					r.NumberOfBytes = &n
				}
			case "EncryptionContext":
				r.EncryptionContext = p.strMap()
			case "SourceEncryptionContext":
				r.SourceEncryptionContext = p.strMap()
			case "DestinationEncryptionContext":
				r.DestinationEncryptionContext = p.strMap()
			case "Plaintext":
				r.Plaintext = p.base64()
			case "CiphertextBlob":
				r.CiphertextBlob = p.base64()
			default:
				p.skip(0)
			}
			p.ws()
			if p.peek() == ',' {
				p.i++
				continue
			}
			p.expect('}')
			break
		}
	}
	p.ws()
	if p.err == nil && p.i != len(p.b) {
		p.fail("data after the object")
	}
	return r, p.err
}

type parser struct {
	b   []byte
	i   int
	err error
}

func (p *parser) fail(what string) {
	if p.err == nil {
		p.err = fmt.Errorf("invalid JSON at offset %d: %s", p.i, what)
	}
	p.i = len(p.b)
}

func (p *parser) peek() byte {
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) expect(c byte) {
	if p.peek() != c {
		p.fail("want " + strconv.QuoteRune(rune(c)))
		return
	}
	p.i++
}

// rawStr returns a string token, quotes included, and whether it has an
// escape.
func (p *parser) rawStr() ([]byte, bool) {
	start := p.i
	p.expect('"')
	escaped := false
	for p.i < len(p.b) {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return p.b[start:p.i], escaped
		case c == '\\':
			escaped = true
			p.i += 2
		case c < 0x20:
			p.fail("control character in a string")
			return nil, false
		default:
			p.i++
		}
	}
	p.fail("unterminated string")
	return nil, false
}

func (p *parser) str() string {
	if p.literal("null") {
		return ""
	}
	tok, escaped := p.rawStr()
	if p.err != nil {
		return ""
	}
	if !escaped {
		return string(tok[1 : len(tok)-1])
	}
	var s string
	if err := json.Unmarshal(tok, &s); err != nil {
		p.fail(err.Error())
	}
	return s
}

func (p *parser) base64() []byte {
	if p.literal("null") {
		return nil
	}
	tok, escaped := p.rawStr()
	if p.err != nil {
		return nil
	}
	if escaped {
		var b []byte
		if err := json.Unmarshal(tok, &b); err != nil {
			p.fail(err.Error())
		}
		return b
	}
	tok = tok[1 : len(tok)-1]
	b := make([]byte, base64.StdEncoding.DecodedLen(len(tok)))
	n, err := base64.StdEncoding.Decode(b, tok)
	if err != nil {
		p.fail("base64: " + err.Error())
	}
	return b[:n]
}

func (p *parser) int() int {
	start := p.i
	for p.i < len(p.b) && (p.b[p.i] == '-' || p.b[p.i] >= '0' && p.b[p.i] <= '9' || p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E' || p.b[p.i] == '+') {
		p.i++
	}
	n, err := strconv.Atoi(string(p.b[start:p.i]))
	if err != nil {
		p.fail("not an integer")
	}
	return n
}

func (p *parser) strMap() map[string]string {
	if p.literal("null") {
		return nil
	}
	m := map[string]string{}
	p.expect('{')
	p.ws()
	if p.peek() == '}' {
		p.i++
		return m
	}
	for p.err == nil {
		p.ws()
		k := p.str()
		p.ws()
		p.expect(':')
		p.ws()
		m[k] = p.str()
		p.ws()
		if p.peek() == ',' {
			p.i++
			continue
		}
		p.expect('}')
		break
	}
	return m
}

func (p *parser) literal(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

// skip passes over any value.
func (p *parser) skip(depth int) {
	if depth > 32 {
		p.fail("nested too deeply")
		return
	}
	switch c := p.peek(); {
	case c == '"':
		p.rawStr()
	case c == '{' || c == '[':
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		p.i++
		p.ws()
		if p.peek() == end {
			p.i++
			return
		}
		for p.err == nil {
			p.ws()
			if c == '{' {
				p.rawStr()
				p.ws()
				p.expect(':')
				p.ws()
			}
			p.skip(depth + 1)
			p.ws()
			if p.peek() == ',' {
				p.i++
				continue
			}
			p.expect(end)
			return
		}
	case c == '-' || c >= '0' && c <= '9':
		start := p.i
		for p.i < len(p.b) && (p.b[p.i] == '-' || p.b[p.i] >= '0' && p.b[p.i] <= '9' || p.b[p.i] == '.' || p.b[p.i] == 'e' || p.b[p.i] == 'E' || p.b[p.i] == '+') {
			p.i++
		}
		if _, err := strconv.ParseFloat(string(p.b[start:p.i]), 64); err != nil {
			p.fail("not a number")
		}
	case p.literal("true"), p.literal("false"), p.literal("null"):
	default:
		p.fail("not a value")
	}
}
