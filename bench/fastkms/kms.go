package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"
)

// The operations served, counted in server.calls.
const (
	opGenerateDataKey = iota
	opDecrypt
	opEncrypt
	opReEncrypt
	opDescribeKey
	opOther // anything else: answered UnknownOperationException
	numOps
)

var opNames = [numOps]string{"GenerateDataKey", "Decrypt", "Encrypt", "ReEncrypt", "DescribeKey", "other"}

// dispatch answers one KMS request: an HTTP status, the error type ("" for
// success) and the JSON body.
func (s *server) dispatch(target, body []byte) (int, string, []byte) {
	name, ok := bytes.CutPrefix(target, []byte("TrentService."))
	op := opOther
	if ok {
		for i, n := range opNames[:opOther] {
			if string(name) == n {
				op = i
			}
		}
	}
	s.calls[op].Add(1)
	status, errType, out := s.answer(op, body)
	if errType != "" {
		s.failed.Add(1)
	}
	return status, errType, out
}

func (s *server) answer(op int, body []byte) (int, string, []byte) {
	if op == opOther {
		return errorBody(400, "UnknownOperationException", "operation not served by fastkms")
	}
	r, err := parseRequest(body)
	if err != nil {
		return errorBody(400, "SerializationException", "request body: "+err.Error())
	}
	k := s.key
	switch op {
	case opGenerateDataKey:
		if !k.names(r.KeyId) {
			return notFound(r.KeyId)
		}
		n := 0
		switch {
		case r.KeySpec == "AES_256" && r.NumberOfBytes == nil:
			n = 32
		case r.KeySpec == "AES_128" && r.NumberOfBytes == nil:
			n = 16
		case r.KeySpec == "" && r.NumberOfBytes != nil && *r.NumberOfBytes >= 1 && *r.NumberOfBytes <= 1024:
			n = *r.NumberOfBytes
		default:
			return errorBody(400, "ValidationException", "give KeySpec AES_256 or AES_128, or NumberOfBytes from 1 to 1024")
		}
		pt := make([]byte, n)
		rand.Read(pt)
		blob := k.seal(pt, r.EncryptionContext)
		out := object("CiphertextBlob", b64(blob), "KeyId", k.arn, "Plaintext", b64(pt))
		clear(pt)
		return 200, "", out
	case opEncrypt:
		if !k.names(r.KeyId) {
			return notFound(r.KeyId)
		}
		if len(r.Plaintext) == 0 || len(r.Plaintext) > 4096 {
			return errorBody(400, "ValidationException", "Plaintext must be 1 to 4096 bytes")
		}
		blob := k.seal(r.Plaintext, r.EncryptionContext)
		return 200, "", object("CiphertextBlob", b64(blob), "EncryptionAlgorithm", "SYMMETRIC_DEFAULT", "KeyId", k.arn)
	case opDecrypt:
		if st, typ, body := s.checkBlob(r.KeyId, r.CiphertextBlob); st != 0 {
			return st, typ, body
		}
		pt, err := k.open(r.CiphertextBlob, r.EncryptionContext)
		if err != nil {
			return errorBody(400, "InvalidCiphertextException", err.Error())
		}
		out := object("EncryptionAlgorithm", "SYMMETRIC_DEFAULT", "KeyId", k.arn, "Plaintext", b64(pt))
		clear(pt)
		return 200, "", out
	case opReEncrypt:
		if st, typ, body := s.checkBlob(r.SourceKeyId, r.CiphertextBlob); st != 0 {
			return st, typ, body
		}
		if !k.names(r.DestinationKeyId) {
			return notFound(r.DestinationKeyId)
		}
		pt, err := k.open(r.CiphertextBlob, r.SourceEncryptionContext)
		if err != nil {
			return errorBody(400, "InvalidCiphertextException", err.Error())
		}
		blob := k.seal(pt, r.DestinationEncryptionContext)
		clear(pt)
		return 200, "", object("CiphertextBlob", b64(blob), "DestinationEncryptionAlgorithm", "SYMMETRIC_DEFAULT",
			"KeyId", k.arn, "SourceEncryptionAlgorithm", "SYMMETRIC_DEFAULT", "SourceKeyId", k.arn)
	case opDescribeKey:
		if !k.names(r.KeyId) {
			return notFound(r.KeyId)
		}
		md, _ := json.Marshal(map[string]any{"KeyMetadata": map[string]any{
			"Arn": k.arn, "KeyId": k.id, "AWSAccountId": accountOf(k.arn), "Enabled": true, "KeyState": "Enabled",
			"KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
			"EncryptionAlgorithms": []string{"SYMMETRIC_DEFAULT"}, "KeyManager": "CUSTOMER", "Origin": "AWS_KMS",
			"MultiRegion": false, "Description": "fastkms benchmark key", "CreationDate": float64(started.Unix()),
		}})
		return 200, "", md
	}
	return errorBody(500, "KMSInternalException", "unreachable")
}

var started = time.Now()

// checkBlob refuses a blob of another key, or a KeyId naming another key,
// as KMS does: 0 if the blob may be opened.
func (s *server) checkBlob(keyID string, blob []byte) (int, string, []byte) {
	if len(blob) == 0 {
		return errorBody(400, "ValidationException", "no CiphertextBlob")
	}
	if keyID != "" && !s.key.names(keyID) {
		return notFound(keyID)
	}
	if id := blobKeyID(blob); id != s.key.id {
		if keyID != "" && id != "" {
			return errorBody(400, "IncorrectKeyException", "the blob was made under another key")
		}
		return errorBody(400, "InvalidCiphertextException", errBadBlob.Error())
	}
	return 0, "", nil
}

func notFound(keyID string) (int, string, []byte) {
	return errorBody(400, "NotFoundException", "key "+strconv.Quote(keyID)+" does not exist")
}

func errorBody(status int, typ, msg string) (int, string, []byte) {
	b, _ := json.Marshal(map[string]string{"__type": typ, "message": msg})
	return status, typ, b
}

func accountOf(arn string) string {
	// arn:aws:kms:REGION:ACCOUNT:key/ID
	parts := bytes.SplitN([]byte(arn), []byte(":"), 6)
	if len(parts) < 5 {
		return ""
	}
	return string(parts[4])
}

// b64 marks a value object writes as it is (base64 needs no escaping).
type b64 []byte

// object writes a JSON object of name/value pairs whose values are
// strings (quoted by strconv, equal to JSON's for the ASCII used here) or
// b64.
func object(kv ...any) []byte {
	b := make([]byte, 0, 512)
	b = append(b, '{')
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, kv[i].(string))
		b = append(b, ':')
		switch v := kv[i+1].(type) {
		case string:
			b = strconv.AppendQuoteToASCII(b, v)
		case b64:
			b = append(b, '"')
			b = base64.StdEncoding.AppendEncode(b, v)
			b = append(b, '"')
		}
	}
	return append(b, '}')
}
