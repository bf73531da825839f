package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
)

const (
	tokenVersion   = "SSI1"
	tokenIDLen     = 6
	tokenSecretLen = 24
	tokenAlphabet  = "abcdefghijklmnopqrstuvwxyz0123456789"
	caHashHexLen   = 2 * sha256.Size
	// tokenFixHint ends every parse error, because the fix is nearly always the same.
	tokenFixHint = `copy it again from "ssi token create"`
)

// Token is a join token. Its text form is "SSI1.<ca hash hex>.<id>.<secret>". The CA hash lets a
// joining node authenticate the cluster; the id names the token server-side; the secret
// authenticates the joiner and is stored server-side only as HashSecret(secret).
type Token struct {
	CAHash string // "sha256:<64 hex digits>", as CAHash returns
	ID     string
	Secret string
}

// NewToken creates a token with a random id and secret that pins the CA with hash caHash.
func NewToken(caHash string) (Token, error) {
	hexHash, err := parseCAHash(caHash)
	if err != nil {
		return Token{}, fmt.Errorf("create join token: %w", err)
	}
	id, err := randomString(tokenIDLen)
	if err != nil {
		return Token{}, fmt.Errorf("create join token id: %w", err)
	}
	secret, err := randomString(tokenSecretLen)
	if err != nil {
		return Token{}, fmt.Errorf("create join token secret: %w", err)
	}
	return Token{CAHash: caHashPrefix + hexHash, ID: id, Secret: secret}, nil
}

// ParseToken parses the text form of a token. Surrounding whitespace is ignored. Errors never
// repeat the token text, since it holds a secret and errors end up in logs.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Token{}, errors.New("join token is empty; " + tokenFixHint)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return Token{}, fmt.Errorf("join token is malformed: want %s.<ca-hash>.<id>.<secret>; %s", tokenVersion, tokenFixHint)
	}
	version, hexHash, id, secret := parts[0], parts[1], parts[2], parts[3]
	if version != tokenVersion {
		return Token{}, fmt.Errorf("join token has an unknown format (want it to start with %q); %s with this version of ssi", tokenVersion+".", tokenFixHint)
	}
	if len(hexHash) != caHashHexLen || !isHex(hexHash) {
		return Token{}, fmt.Errorf("join token's CA hash is not %d hex digits (it is %d characters); %s", caHashHexLen, len(hexHash), tokenFixHint)
	}
	if len(id) != tokenIDLen || !inAlphabet(id) {
		return Token{}, fmt.Errorf("join token's id is not %d characters of a-z and 0-9; %s", tokenIDLen, tokenFixHint)
	}
	if len(secret) != tokenSecretLen || !inAlphabet(secret) {
		return Token{}, fmt.Errorf("join token's secret is not %d characters of a-z and 0-9; %s", tokenSecretLen, tokenFixHint)
	}
	return Token{CAHash: caHashPrefix + strings.ToLower(hexHash), ID: id, Secret: secret}, nil
}

// String returns the text form of the token, secret included.
func (t Token) String() string {
	return tokenVersion + "." + strings.TrimPrefix(t.CAHash, caHashPrefix) + "." + t.ID + "." + t.Secret
}

// LogValue keeps the secret out of structured logs when a token is logged by accident.
func (t Token) LogValue() slog.Value {
	return slog.GroupValue(slog.String("ca_hash", t.CAHash), slog.String("id", t.ID))
}

// HashSecret returns the hex SHA-256 of a token secret. The server stores this instead of the
// secret; a plain hash is enough because secrets are 124 random bits, not passwords.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches reports whether secret hashes to hash, in time independent of where they differ.
func SecretMatches(hash, secret string) bool {
	want, err := hex.DecodeString(hash)
	if err != nil || len(want) != sha256.Size {
		return false
	}
	got := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(want, got[:]) == 1
}

// parseCAHash checks a "sha256:<hex>" pin and returns its lower-case hex part.
func parseCAHash(caHash string) (string, error) {
	hexHash, ok := strings.CutPrefix(caHash, caHashPrefix)
	if !ok || len(hexHash) != caHashHexLen || !isHex(hexHash) {
		return "", fmt.Errorf("CA hash %q is not of the form sha256:<%d hex digits>; compute it with CAHash", caHash, caHashHexLen)
	}
	return strings.ToLower(hexHash), nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func inAlphabet(s string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(tokenAlphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// randomString draws n characters uniformly from tokenAlphabet using crypto/rand.
func randomString(n int) (string, error) {
	// Bytes at or above this bound are rejected so that every character is equally likely.
	const bound = 256 - 256%len(tokenAlphabet)
	out := make([]byte, 0, n)
	buf := make([]byte, n)
	for len(out) < n {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("read random bytes: %w", err)
		}
		for _, b := range buf {
			if int(b) < bound && len(out) < n {
				out = append(out, tokenAlphabet[b%byte(len(tokenAlphabet))])
			}
		}
	}
	return string(out), nil
}
