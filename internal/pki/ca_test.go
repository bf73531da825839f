package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"strings"
	"testing"
	"time"
)

func TestNewCA(t *testing.T) {
	ca := mustCA(t, "c0ffee")
	cert := ca.Cert

	if got, want := cert.Subject.CommonName, "ssi cluster CA c0ffee"; got != want {
		t.Errorf("CN = %q, want %q", got, want)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA = %v, BasicConstraintsValid = %v; want both true", cert.IsCA, cert.BasicConstraintsValid)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("KeyUsage %b lacks CertSign", cert.KeyUsage)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T is not ECDSA P-256", cert.PublicKey)
	}
	if life := time.Until(cert.NotAfter); life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("CA valid for another %v; want about 10 years", life)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("CA is not validly self-signed: %v", err)
	}
	parsed, err := ParseCertPEM(ca.CertPEM)
	if err != nil || !parsed.Equal(cert) {
		t.Errorf("CertPEM does not hold Cert (err %v)", err)
	}
	if _, err := NewCA(""); err == nil {
		t.Error("NewCA(\"\") succeeded; want an error for the empty cluster id")
	}
}

func TestLoadCA(t *testing.T) {
	ca := mustCA(t, "one")
	other := mustCA(t, "two")
	node := mustNodeCert(t, ca, "n1", RoleServer)

	tests := []struct {
		name    string
		certPEM []byte
		keyPEM  []byte
		wantErr string
	}{
		{name: "matching pair", certPEM: ca.CertPEM, keyPEM: ca.KeyPEM},
		{name: "key of another CA", certPEM: ca.CertPEM, keyPEM: other.KeyPEM, wantErr: "does not match"},
		{name: "node certificate instead of CA", certPEM: node.certPEM, keyPEM: node.keyPEM, wantErr: "not a CA"},
		{name: "garbage certificate", certPEM: []byte("not pem"), keyPEM: ca.KeyPEM, wantErr: "no PEM CERTIFICATE"},
		{name: "garbage key", certPEM: ca.CertPEM, keyPEM: []byte("not pem"), wantErr: "no PEM private key"},
		{name: "key and cert swapped", certPEM: ca.KeyPEM, keyPEM: ca.CertPEM, wantErr: "no PEM CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loaded, err := LoadCA(tt.certPEM, tt.keyPEM)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadCA error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadCA: %v", err)
			}
			// A loaded CA must be able to issue certificates that verify under the original.
			csrPEM, _ := mustCSR(t, "n2")
			certPEM, err := loaded.SignNode(csrPEM, "n2", RoleClient, nil, time.Hour)
			if err != nil {
				t.Fatalf("SignNode with loaded CA: %v", err)
			}
			cert, err := ParseCertPEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if err := cert.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("certificate from loaded CA does not verify under original CA: %v", err)
			}
		})
	}
}

func TestParseKeyPEM(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	_, pkcs8PEM, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		pem     []byte
		wantErr bool
	}{
		{name: "PKCS#8 from NewKey", pem: pkcs8PEM},
		{name: "SEC 1", pem: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})},
		{name: "PKCS#1 RSA", pem: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
		{name: "key after a certificate block", pem: append(mustCA(t, "x").CertPEM, pkcs8PEM...)},
		{name: "empty", pem: nil, wantErr: true},
		{name: "corrupt body", pem: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), wantErr: true},
		{name: "only a certificate", pem: mustCA(t, "y").CertPEM, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := ParseKeyPEM(tt.pem)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseKeyPEM succeeded with %T; want an error", key)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKeyPEM: %v", err)
			}
			if key.Public() == nil {
				t.Error("parsed key has no public key")
			}
		})
	}
}

func TestCAHash(t *testing.T) {
	ca := mustCA(t, "hash")
	sum := sha256.Sum256(ca.Cert.RawSubjectPublicKeyInfo)
	if got, want := CAHash(ca.Cert), "sha256:"+hex.EncodeToString(sum[:]); got != want {
		t.Errorf("CAHash = %q, want %q", got, want)
	}
	if CAHash(ca.Cert) == CAHash(mustCA(t, "hash").Cert) {
		t.Error("two CAs with the same cluster id have the same hash; the pin must depend on the key")
	}
}
