package pki

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

func mustCA(t testing.TB, clusterID string) *CA {
	t.Helper()
	ca, err := NewCA(clusterID)
	if err != nil {
		t.Fatalf("NewCA(%q): %v", clusterID, err)
	}
	return ca
}

func mustCSR(t testing.TB, name string) (csrPEM, keyPEM []byte) {
	t.Helper()
	key, keyPEM, err := NewKey()
	if err != nil {
		t.Fatalf("NewKey: %v", err)
	}
	csrPEM, err = NewCSR(key, name)
	if err != nil {
		t.Fatalf("NewCSR: %v", err)
	}
	return csrPEM, keyPEM
}

// nodeCert is a node's credentials as the agent would hold them after joining.
type nodeCert struct {
	certPEM, keyPEM []byte
	cert            *x509.Certificate
	pair            tls.Certificate
}

func mustNodeCertAt(t testing.TB, ca *CA, now time.Time, name, role string, ttl time.Duration) nodeCert {
	t.Helper()
	csrPEM, keyPEM := mustCSR(t, name)
	certPEM, err := ca.signNodeAt(now, csrPEM, name, role, []net.IP{net.ParseIP("127.0.0.1")}, ttl)
	if err != nil {
		t.Fatalf("sign node %q: %v", name, err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatalf("parse node cert: %v", err)
	}
	pair, err := NodeKeyPair(certPEM, keyPEM, ca.CertPEM)
	if err != nil {
		t.Fatalf("NodeKeyPair: %v", err)
	}
	return nodeCert{certPEM: certPEM, keyPEM: keyPEM, cert: cert, pair: pair}
}

func mustNodeCert(t testing.TB, ca *CA, name, role string) nodeCert {
	t.Helper()
	return mustNodeCertAt(t, ca, time.Now(), name, role, time.Hour)
}

// mustCustomCert signs a certificate from an arbitrary template with the CA key, to build
// certificates SignNode would never issue. The chain holds the leaf and the CA.
func mustCustomCert(t testing.TB, ca *CA, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, _, err := NewKey()
	if err != nil {
		t.Fatalf("NewKey: %v", err)
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(1)
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Minute)
		tmpl.NotAfter = time.Now().Add(time.Hour)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Cert.Raw}, PrivateKey: key}
}

func nodeTemplate(name, org, role string, usages ...x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: name, Organization: []string{org}, OrganizationalUnit: []string{role}},
		DNSNames:              []string{name},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
	}
}
