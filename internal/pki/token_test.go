package pki

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

const testHashHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestTokenRoundTrip(t *testing.T) {
	ca := mustCA(t, "tok")
	tok, err := NewToken(CAHash(ca.Cert))
	if err != nil {
		t.Fatalf("NewToken: %v", err)
	}
	if tok.CAHash != CAHash(ca.Cert) {
		t.Errorf("CAHash = %q, want %q", tok.CAHash, CAHash(ca.Cert))
	}
	if len(tok.ID) != 6 || !inAlphabet(tok.ID) {
		t.Errorf("ID %q is not 6 characters of [a-z0-9]", tok.ID)
	}
	if len(tok.Secret) != 24 || !inAlphabet(tok.Secret) {
		t.Errorf("secret %q is not 24 characters of [a-z0-9]", tok.Secret)
	}
	text := tok.String()
	if want := "SSI1." + strings.TrimPrefix(CAHash(ca.Cert), "sha256:") + "." + tok.ID + "." + tok.Secret; text != want {
		t.Errorf("String = %q, want %q", text, want)
	}
	for _, input := range []string{text, "  " + text + "\n", "\t" + text + "\r\n"} {
		parsed, err := ParseToken(input)
		if err != nil {
			t.Fatalf("ParseToken(%q): %v", input, err)
		}
		if parsed != tok {
			t.Errorf("ParseToken(%q) = %+v, want %+v", input, parsed, tok)
		}
	}

	other, err := NewToken(CAHash(ca.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if other.ID == tok.ID || other.Secret == tok.Secret {
		t.Errorf("two tokens share id or secret: %+v and %+v", tok, other)
	}
}

func TestNewTokenRejectsBadHash(t *testing.T) {
	for _, hash := range []string{"", testHashHex, "sha256:abc", "md5:" + testHashHex, "sha256:" + strings.Repeat("g", 64)} {
		if tok, err := NewToken(hash); err == nil {
			t.Errorf("NewToken(%q) = %+v; want an error", hash, tok)
		}
	}
}

func TestParseTokenMalformed(t *testing.T) {
	const (
		id     = "abc123"
		secret = "0123456789abcdefghijklmn"
	)
	tests := []struct {
		name    string
		input   string
		wantErr string
	}{
		{name: "empty", input: "", wantErr: "join token is empty"},
		{name: "blank", input: " \n\t", wantErr: "join token is empty"},
		{name: "three parts", input: "SSI1." + testHashHex + "." + id, wantErr: "join token is malformed: want SSI1.<ca-hash>.<id>.<secret>"},
		{name: "five parts", input: "SSI1." + testHashHex + "." + id + "." + secret + ".x", wantErr: "malformed"},
		{name: "kubeadm style", input: "abcdef.0123456789abcdef", wantErr: "malformed"},
		{name: "unknown version", input: "SSI2." + testHashHex + "." + id + "." + secret, wantErr: "unknown format"},
		{name: "lower-case version", input: "ssi1." + testHashHex + "." + id + "." + secret, wantErr: "unknown format"},
		{name: "hash too short", input: "SSI1." + testHashHex[:63] + "." + id + "." + secret, wantErr: "CA hash is not 64 hex digits"},
		{name: "hash with prefix", input: "SSI1.sha256:" + testHashHex + "." + id + "." + secret, wantErr: "CA hash"},
		{name: "hash not hex", input: "SSI1." + strings.Repeat("z", 64) + "." + id + "." + secret, wantErr: "CA hash"},
		{name: "id too long", input: "SSI1." + testHashHex + ".abc1234." + secret, wantErr: "id is not 6 characters"},
		{name: "id upper case", input: "SSI1." + testHashHex + ".ABC123." + secret, wantErr: "id is not"},
		{name: "secret too short", input: "SSI1." + testHashHex + "." + id + "." + secret[:23], wantErr: "secret is not 24 characters"},
		{name: "secret with symbol", input: "SSI1." + testHashHex + "." + id + ".0123456789abcdefghijklm!", wantErr: "secret is not"},
		{name: "inner space", input: "SSI1." + testHashHex + "." + id + ". " + secret[1:], wantErr: "secret is not"},
		{name: "empty parts", input: "SSI1...", wantErr: "CA hash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := ParseToken(tt.input)
			if err == nil {
				t.Fatalf("ParseToken = %+v; want an error containing %q", tok, tt.wantErr)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error %q does not contain %q", msg, tt.wantErr)
			}
			if !strings.Contains(msg, `copy it again from "ssi token create"`) {
				t.Errorf("error %q does not say how to fix it", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans several lines: %q", msg)
			}
			if strings.Contains(msg, secret[:10]) {
				t.Errorf("error %q leaks the secret", msg)
			}
		})
	}
}

func TestParseTokenNormalizesHashCase(t *testing.T) {
	tok, err := ParseToken("SSI1." + strings.ToUpper(testHashHex) + ".abc123.0123456789abcdefghijklmn")
	if err != nil {
		t.Fatal(err)
	}
	if tok.CAHash != "sha256:"+testHashHex {
		t.Errorf("CAHash = %q; want lower-case sha256:%s", tok.CAHash, testHashHex)
	}
}

func TestTokenLogValueHidesSecret(t *testing.T) {
	tok := Token{CAHash: "sha256:" + testHashHex, ID: "abc123", Secret: "topsecretvalue0123456789"}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("joining", "token", tok)
	if strings.Contains(buf.String(), tok.Secret) {
		t.Errorf("log line leaks the secret: %s", buf.String())
	}
	if !strings.Contains(buf.String(), "abc123") {
		t.Errorf("log line lacks the token id: %s", buf.String())
	}
}

func TestSecretMatches(t *testing.T) {
	const secret = "0123456789abcdefghijklmn"
	hash := HashSecret(secret)
	if hash != strings.ToLower(hash) || len(hash) != 64 {
		t.Fatalf("HashSecret = %q; want 64 lower-case hex digits", hash)
	}
	if hash == secret || strings.Contains(hash, secret) {
		t.Fatal("HashSecret returned the secret")
	}
	tests := []struct {
		name   string
		hash   string
		secret string
		want   bool
	}{
		{name: "right secret", hash: hash, secret: secret, want: true},
		{name: "upper-case stored hash", hash: strings.ToUpper(hash), secret: secret, want: true},
		{name: "wrong secret", hash: hash, secret: "0123456789abcdefghijklmo", want: false},
		{name: "empty secret", hash: hash, secret: "", want: false},
		{name: "secret passed as hash", hash: secret, secret: secret, want: false},
		{name: "empty hash", hash: "", secret: secret, want: false},
		{name: "truncated hash", hash: hash[:62], secret: secret, want: false},
		{name: "hash of empty string vs empty secret", hash: HashSecret(""), secret: "", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SecretMatches(tt.hash, tt.secret); got != tt.want {
				t.Errorf("SecretMatches = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRandomStringUsesWholeAlphabet(t *testing.T) {
	// 36 symbols over 3600 draws: a missing symbol means a biased or truncated alphabet.
	s, err := randomString(3600)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range tokenAlphabet {
		if !strings.ContainsRune(s, c) {
			t.Errorf("symbol %q never drawn in 3600 characters", c)
		}
	}
}
