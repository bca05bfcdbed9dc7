package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Names in CIPHERDIR are chosen by whoever can write it, and the human
// output of the offline commands goes to the operator's terminal, where a
// name holding \r, \n or an escape sequence could erase or forge lines.
// So a name is printed as it is when every character of it is printable,
// and quoted (as strconv.Quote does) otherwise; ordinary names stay as
// they are. JSON output needs neither: its encoding escapes them.

// quoteName returns name as it may be printed on a terminal.
func quoteName(name string) string {
	if utf8.ValidString(name) && strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) }) < 0 {
		return name
	}
	return strconv.Quote(name)
}

// oneLine escapes what control characters line holds (as strconv.Quote
// does, without the quotes): the last guard of a line printed for the
// operator, where a name from CIPHERDIR reached it inside an error.
func oneLine(line string) string {
	if utf8.ValidString(line) && strings.IndexFunc(line, unicode.IsControl) < 0 {
		return line
	}
	q := strconv.Quote(line)
	return q[1 : len(q)-1]
}
