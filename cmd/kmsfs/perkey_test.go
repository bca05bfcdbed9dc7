package main

import "testing"

func TestKeyedValue(t *testing.T) {
	const arnA = "arn:aws:kms:eu-west-2:111122223333:key/a0a0"
	var v keyedValue
	for _, s := range []string{"https://kms.example.com/?x=y", arnA + "=http://127.0.0.1:1", "b0b0=https://b.example.com"} {
		if err := v.Set(s); err != nil {
			t.Fatalf("Set(%q): %v", s, err)
		}
	}
	if got := v.forKey(arnA); got != "http://127.0.0.1:1" {
		t.Errorf("key A by ARN: %q", got)
	}
	if got := v.forKey("alias/b", "arn:aws:kms:eu-west-2:111122223333:key/b0b0"); got != "https://b.example.com" {
		t.Errorf("key B by key ID: %q", got)
	}
	if got := v.forKey("alias/c"); got != "https://kms.example.com/?x=y" {
		t.Errorf("another key takes the plain value: %q", got)
	}
	if err := v.Set(arnA + "=https://again"); err == nil {
		t.Error("a key given twice was accepted")
	}
	if err := v.Set("https://second"); err == nil {
		t.Error("a second plain value was accepted")
	}
	if k := v.unknownKey([][]string{{arnA}}); k != "b0b0" {
		t.Errorf("unknownKey = %q, want b0b0", k)
	}
	if k := v.unknownKey([][]string{{arnA}, {"alias/b", "arn:aws:kms:eu-west-2:111122223333:key/b0b0"}}); k != "" {
		t.Errorf("unknownKey = %q, want none", k)
	}
}
