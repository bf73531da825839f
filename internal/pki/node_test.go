package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSignNode(t *testing.T) {
	ca := mustCA(t, "sign")
	ips := []net.IP{net.ParseIP("10.1.2.3"), net.ParseIP("fd00::7")}
	tests := []struct {
		name, node, role string
	}{
		{name: "server", node: "alpha", role: RoleServer},
		{name: "client", node: "beta.example", role: RoleClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csrPEM, _ := mustCSR(t, tt.node)
			before := time.Now()
			certPEM, err := ca.SignNode(csrPEM, tt.node, tt.role, ips, 24*time.Hour)
			if err != nil {
				t.Fatalf("SignNode: %v", err)
			}
			cert, err := ParseCertPEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca.Cert)
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Errorf("verify for usage %v: %v", usage, err)
				}
			}
			if cert.Subject.CommonName != tt.node ||
				!slices.Equal(cert.Subject.Organization, []string{"ssi-node"}) ||
				!slices.Equal(cert.Subject.OrganizationalUnit, []string{tt.role}) {
				t.Errorf("subject = %v; want CN=%s O=ssi-node OU=%s", cert.Subject, tt.node, tt.role)
			}
			if !slices.Equal(cert.DNSNames, []string{tt.node}) {
				t.Errorf("DNS SANs = %q, want [%q]", cert.DNSNames, tt.node)
			}
			if len(cert.IPAddresses) != 2 || !cert.IPAddresses[0].Equal(ips[0]) || !cert.IPAddresses[1].Equal(ips[1]) {
				t.Errorf("IP SANs = %v, want %v", cert.IPAddresses, ips)
			}
			if cert.IsCA {
				t.Error("node certificate is a CA")
			}
			if cert.NotBefore.After(before.Add(-4*time.Minute)) || cert.NotBefore.Before(before.Add(-6*time.Minute)) {
				t.Errorf("NotBefore %v is not about 5 minutes before %v", cert.NotBefore, before)
			}
			if d := cert.NotAfter.Sub(before.Add(24 * time.Hour)); d < -time.Minute || d > time.Minute {
				t.Errorf("NotAfter %v is not about 24h after %v", cert.NotAfter, before)
			}
			// A 128-bit random serial has its top bit set half of the time; require more than 64
			// bits so a counter or timestamp serial fails.
			if bits := cert.SerialNumber.BitLen(); bits <= 64 || bits > 128 {
				t.Errorf("serial has %d bits; want a random 128-bit serial", bits)
			}
			name, role, err := NodeIdentity(cert)
			if err != nil || name != tt.node || role != tt.role {
				t.Errorf("NodeIdentity = %q, %q, %v; want %q, %q", name, role, err, tt.node, tt.role)
			}
		})
	}
}

func TestSignNodeSerialsDiffer(t *testing.T) {
	ca := mustCA(t, "serial")
	csrPEM, _ := mustCSR(t, "n")
	seen := map[string]bool{}
	for range 4 {
		certPEM, err := ca.SignNode(csrPEM, "n", RoleClient, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ParseCertPEM(certPEM)
		if err != nil {
			t.Fatal(err)
		}
		if seen[cert.SerialNumber.String()] {
			t.Fatalf("serial %v issued twice", cert.SerialNumber)
		}
		seen[cert.SerialNumber.String()] = true
	}
}

func TestSignNodeIgnoresCSRNames(t *testing.T) {
	ca := mustCA(t, "ignore")
	key, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	// A joiner asking to be someone else: another node's name, a server role, wildcard and
	// foreign SANs. None of it may reach the certificate.
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{
			CommonName:         "victim",
			Organization:       []string{"ssi-node"},
			OrganizationalUnit: []string{RoleServer},
		},
		DNSNames:       []string{"victim", "*.example.com"},
		IPAddresses:    []net.IP{net.ParseIP("192.0.2.1")},
		EmailAddresses: []string{"root@example.com"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})

	certPEM, err := ca.SignNode(csrPEM, "honest", RoleClient, []net.IP{net.ParseIP("10.0.0.9")}, time.Hour)
	if err != nil {
		t.Fatalf("SignNode: %v", err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if got := cert.Subject.String(); got != "CN=honest,OU=client,O=ssi-node" {
		t.Errorf("subject = %q; want CN=honest,OU=client,O=ssi-node", got)
	}
	if !slices.Equal(cert.DNSNames, []string{"honest"}) || len(cert.EmailAddresses) != 0 || len(cert.URIs) != 0 {
		t.Errorf("SANs DNS=%q email=%q uri=%v; want only DNS honest", cert.DNSNames, cert.EmailAddresses, cert.URIs)
	}
	if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("10.0.0.9")) {
		t.Errorf("IP SANs = %v; want [10.0.0.9]", cert.IPAddresses)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		t.Error("certificate does not carry the CSR's public key")
	}
}

func TestSignNodeRejects(t *testing.T) {
	ca := mustCA(t, "reject")
	goodCSR, _ := mustCSR(t, "n1")

	csrFor := func(t *testing.T, key crypto.Signer) []byte {
		t.Helper()
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}}, key)
		if err != nil {
			t.Fatalf("CreateCertificateRequest: %v", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(goodCSR)
	tampered := slices.Clone(block.Bytes)
	tampered[len(tampered)-1] ^= 0x01 // last byte of the signature
	otherCA := mustCA(t, "other")

	tests := []struct {
		name    string
		ca      *CA
		csr     []byte
		node    string
		role    string
		ips     []net.IP
		ttl     time.Duration
		wantErr string
	}{
		{name: "role admin", csr: goodCSR, node: "n1", role: "admin", wantErr: `role "admin" is not valid`},
		{name: "role empty", csr: goodCSR, node: "n1", role: "", wantErr: "is not valid"},
		{name: "role wrong case", csr: goodCSR, node: "n1", role: "Server", wantErr: "is not valid"},
		{name: "empty node name", csr: goodCSR, node: "", role: RoleServer, wantErr: "node name is empty"},
		{name: "node name with slash", csr: goodCSR, node: "a/b", role: RoleServer, wantErr: "contains"},
		{name: "node name too long", csr: goodCSR, node: strings.Repeat("a", 254), role: RoleServer, wantErr: "at most 253"},
		{name: "negative ttl", csr: goodCSR, node: "n1", role: RoleServer, ttl: -1, wantErr: "not positive"},
		{name: "bad IP", csr: goodCSR, node: "n1", role: RoleServer, ips: []net.IP{{1, 2, 3}}, wantErr: "not an IP address"},
		{name: "not PEM", csr: []byte("hello"), node: "n1", role: RoleServer, wantErr: "not PEM"},
		{name: "wrong PEM type", csr: otherCA.CertPEM, node: "n1", role: RoleServer, wantErr: `type "CERTIFICATE"`},
		{name: "garbage DER", csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), node: "n1", role: RoleServer, wantErr: "parse CSR"},
		{name: "bad CSR signature", csr: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), node: "n1", role: RoleServer, wantErr: "signature does not verify"},
		{name: "RSA 1024", csr: csrFor(t, rsa1024), node: "n1", role: RoleServer, wantErr: "1024-bit RSA"},
		{name: "Ed25519", csr: csrFor(t, edKey), node: "n1", role: RoleServer, wantErr: "ed25519"},
		{name: "ECDSA P-224", csr: csrFor(t, p224), node: "n1", role: RoleServer, wantErr: "P-224"},
		{name: "nil CA", ca: &CA{}, csr: goodCSR, node: "n1", role: RoleServer, wantErr: "CA is not loaded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signer := ca
			if tt.ca != nil {
				signer = tt.ca
			}
			ttl := tt.ttl
			if ttl == 0 {
				ttl = time.Hour
			}
			certPEM, err := signer.SignNode(tt.csr, tt.node, tt.role, tt.ips, ttl)
			if err == nil {
				t.Fatalf("SignNode succeeded (%d bytes); want an error containing %q", len(certPEM), tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("SignNode error = %q; want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans several lines: %q", err)
			}
		})
	}
}

func TestSignNodeAcceptsRSA2048(t *testing.T) {
	ca := mustCA(t, "rsa")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := NewCSR(key, "rsa-node")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignNode(csrPEM, "rsa-node", RoleServer, nil, time.Hour)
	if err != nil {
		t.Fatalf("SignNode with RSA 2048 CSR: %v", err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if cert.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Error("RSA node certificate lacks KeyEncipherment")
	}
}

func TestSignNodeNeverOutlivesCA(t *testing.T) {
	ca := mustCA(t, "clamp")
	csrPEM, _ := mustCSR(t, "n")
	certPEM, err := ca.SignNode(csrPEM, "n", RoleServer, nil, 20*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("node cert NotAfter %v is after CA NotAfter %v", cert.NotAfter, ca.Cert.NotAfter)
	}
}

func TestNodeIdentity(t *testing.T) {
	ca := mustCA(t, "ident")
	parse := func(t *testing.T, tmpl *x509.Certificate) *x509.Certificate {
		t.Helper()
		pair := mustCustomCert(t, ca, tmpl)
		cert, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	twoRoles := nodeTemplate("n", "ssi-node", RoleServer)
	twoRoles.Subject.OrganizationalUnit = []string{RoleServer, RoleClient}
	noSAN := nodeTemplate("n", "ssi-node", RoleServer)
	noSAN.DNSNames = nil
	caLike := nodeTemplate("n", "ssi-node", RoleServer)
	caLike.IsCA = true
	caLike.SerialNumber = big.NewInt(2)

	tests := []struct {
		name               string
		cert               *x509.Certificate
		wantName, wantRole string
		wantErr            bool
	}{
		{name: "signed node cert", cert: mustNodeCert(t, ca, "n7", RoleServer).cert, wantName: "n7", wantRole: RoleServer},
		{name: "client role", cert: parse(t, nodeTemplate("c1", "ssi-node", RoleClient)), wantName: "c1", wantRole: RoleClient},
		{name: "nil", cert: nil, wantErr: true},
		{name: "the CA itself", cert: ca.Cert, wantErr: true},
		{name: "other organization", cert: parse(t, nodeTemplate("n", "acme", RoleServer)), wantErr: true},
		{name: "unknown role", cert: parse(t, nodeTemplate("n", "ssi-node", "admin")), wantErr: true},
		{name: "two roles", cert: parse(t, twoRoles), wantErr: true},
		{name: "name not in SAN", cert: parse(t, noSAN), wantErr: true},
		{name: "marked as CA", cert: parse(t, caLike), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, role, err := NodeIdentity(tt.cert)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("NodeIdentity = %q, %q; want an error", name, role)
				}
				return
			}
			if err != nil || name != tt.wantName || role != tt.wantRole {
				t.Fatalf("NodeIdentity = %q, %q, %v; want %q, %q", name, role, err, tt.wantName, tt.wantRole)
			}
		})
	}
}

func TestNodeKeyPair(t *testing.T) {
	ca := mustCA(t, "pair")
	other := mustCA(t, "pair-other")
	node := mustNodeCert(t, ca, "n1", RoleServer)
	stranger := mustNodeCert(t, other, "n1", RoleServer)

	tests := []struct {
		name                   string
		certPEM, keyPEM, caPEM []byte
		wantErr                string
	}{
		{name: "matching", certPEM: node.certPEM, keyPEM: node.keyPEM, caPEM: ca.CertPEM},
		{name: "chain already has CA", certPEM: append(slices.Clone(node.certPEM), ca.CertPEM...), keyPEM: node.keyPEM, caPEM: ca.CertPEM},
		{name: "key of another node", certPEM: node.certPEM, keyPEM: stranger.keyPEM, caPEM: ca.CertPEM, wantErr: "key must belong"},
		{name: "cert from another CA", certPEM: stranger.certPEM, keyPEM: stranger.keyPEM, caPEM: ca.CertPEM, wantErr: "not signed by this cluster CA"},
		{name: "CA missing", certPEM: node.certPEM, keyPEM: node.keyPEM, caPEM: nil, wantErr: "CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pair, err := NodeKeyPair(tt.certPEM, tt.keyPEM, tt.caPEM)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NodeKeyPair error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NodeKeyPair: %v", err)
			}
			if len(pair.Certificate) != 2 || !slices.Equal(pair.Certificate[1], ca.Cert.Raw) {
				t.Errorf("chain has %d certificates; want leaf followed by the CA once", len(pair.Certificate))
			}
			if pair.Leaf == nil || !pair.Leaf.Equal(node.cert) {
				t.Error("Leaf is not the node certificate")
			}
		})
	}
}
