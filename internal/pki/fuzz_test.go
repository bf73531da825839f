package pki

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func FuzzParseToken(f *testing.F) {
	f.Add("SSI1." + testHashHex + ".abc123.0123456789abcdefghijklmn")
	f.Add(" SSI1." + strings.ToUpper(testHashHex) + ".abc123.0123456789abcdefghijklmn\n")
	f.Add("SSI1...")
	f.Add("SSI1." + testHashHex + ".abc123.0123456789abcdefghijklm\xff")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil {
			t.Fatalf("ParseToken(%q) ok but its String %q does not parse: %v", s, tok.String(), err)
		}
		if again != tok {
			t.Fatalf("round trip changed token: %+v -> %+v", tok, again)
		}
		if !strings.EqualFold(tok.String(), strings.TrimSpace(s)) {
			t.Fatalf("String %q differs from input %q beyond hash case", tok.String(), s)
		}
	})
}

// FuzzSignNodeCSR feeds untrusted bytes to SignNode, either as raw DER wrapped in a CSR PEM block
// (to reach the ASN.1 parser) or as they are (to reach the PEM decoder). It must never panic,
// and whatever it signs must carry only the names the caller chose.
func FuzzSignNodeCSR(f *testing.F) {
	ca := mustCA(f, "fuzz")
	csrPEM, _ := mustCSR(f, "seed")
	block, _ := pem.Decode(csrPEM)
	f.Add(block.Bytes, true)
	f.Add(csrPEM, false)
	f.Add([]byte{0x30, 0x80}, true)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n"), false)
	ip := net.ParseIP("10.9.8.7")

	f.Fuzz(func(t *testing.T, data []byte, wrap bool) {
		input := data
		if wrap {
			input = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: data})
		}
		certPEM, err := ca.SignNode(input, "fuzz-node", RoleClient, []net.IP{ip}, time.Hour)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		cert, err := ParseCertPEM(certPEM)
		if err != nil {
			t.Fatalf("SignNode output does not parse: %v", err)
		}
		if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
			t.Fatalf("SignNode output not signed by CA: %v", err)
		}
		name, role, err := NodeIdentity(cert)
		if err != nil || name != "fuzz-node" || role != RoleClient {
			t.Fatalf("NodeIdentity = %q, %q, %v", name, role, err)
		}
		if !slices.Equal(cert.DNSNames, []string{"fuzz-node"}) || len(cert.IPAddresses) != 1 ||
			len(cert.EmailAddresses) != 0 || len(cert.URIs) != 0 || cert.IsCA ||
			!slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
			t.Fatalf("CSR content leaked into certificate: DNS %q IP %v email %q URI %v CA %v EKU %v",
				cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.URIs, cert.IsCA, cert.ExtKeyUsage)
		}
	})
}
