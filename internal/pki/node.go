package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"
)

// Node roles, carried as the certificate's OrganizationalUnit.
const (
	RoleServer = "server"
	RoleClient = "client"
)

// nodeOrganization marks a certificate as an ssi node certificate.
const nodeOrganization = "ssi-node"

// maxNodeNameLen is the DNS limit, because the node name becomes a DNS SAN.
const maxNodeNameLen = 253

// minRSABits is the smallest RSA modulus accepted in a CSR.
const minRSABits = 2048

// NewCSR creates a PEM certificate signing request for nodeName. The signer ignores its subject
// and SANs; they are filled in only so the request reads sensibly when inspected.
func NewCSR(key crypto.Signer, nodeName string) (csrPEM []byte, err error) {
	if key == nil {
		return nil, errors.New("create CSR: private key is nil; create one with NewKey first")
	}
	if err := checkNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: nodeName},
		DNSNames: []string{nodeName},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR for node %q: %w", nodeName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// SignNode signs a CSR for a node. Subject and SANs come from the arguments, never from the CSR,
// because the CSR is written by the party asking to be trusted; the caller has checked nodeName,
// role and ips. Only the CSR's public key (after its self-signature is checked) is used.
// The certificate never outlives the CA.
func (ca *CA) SignNode(csrPEM []byte, nodeName, role string, ips []net.IP, ttl time.Duration) (certPEM []byte, err error) {
	return ca.signNodeAt(time.Now(), csrPEM, nodeName, role, ips, ttl)
}

func (ca *CA) signNodeAt(now time.Time, csrPEM []byte, nodeName, role string, ips []net.IP, ttl time.Duration) ([]byte, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("sign node certificate: CA is not loaded; load it with LoadCA before signing")
	}
	if err := checkNodeName(nodeName); err != nil {
		return nil, fmt.Errorf("sign node certificate: %w", err)
	}
	if role != RoleServer && role != RoleClient {
		return nil, fmt.Errorf("sign node certificate for %q: role %q is not valid; use %q or %q", nodeName, role, RoleServer, RoleClient)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("sign node certificate for %q: validity %v is not positive; pass a positive ttl", nodeName, ttl)
	}
	sanIPs := make([]net.IP, 0, len(ips))
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, fmt.Errorf("sign node certificate for %q: address %v is not an IP address; pass only parsed IPv4 or IPv6 addresses", nodeName, ip)
		}
		sanIPs = append(sanIPs, slices.Clone(ip))
	}

	csr, err := parseCSRPEM(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("sign node certificate for %q: %w", nodeName, err)
	}
	if err := checkCSRKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("sign node certificate for %q: %w", nodeName, err)
	}

	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("sign node certificate for %q: %w", nodeName, err)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	keyUsage := x509.KeyUsageDigitalSignature
	if _, isRSA := csr.PublicKey.(*rsa.PublicKey); isRSA {
		// TLS 1.3 never uses RSA key transport, but older etcd tooling checks for the bit.
		keyUsage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         nodeName,
			Organization:       []string{nodeOrganization},
			OrganizationalUnit: []string{role},
		},
		DNSNames:              []string{nodeName},
		IPAddresses:           sanIPs,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              keyUsage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign node certificate for %q: %w", nodeName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func parseCSRPEM(csrPEM []byte) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode(csrPEM)
	if block == nil {
		return nil, errors.New("CSR is not PEM; send the output of NewCSR")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("CSR PEM block has type %q; want \"CERTIFICATE REQUEST\" as NewCSR produces", block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature does not verify (it was not made with the key it carries): %w", err)
	}
	return csr, nil
}

func checkCSRKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("CSR has an ECDSA key on curve %s; use P-256 (NewKey does)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("CSR has a %d-bit RSA key; use at least %d bits, or ECDSA P-256 (NewKey does)", k.N.BitLen(), minRSABits)
		}
		return nil
	default:
		return fmt.Errorf("CSR has a key of type %T; use ECDSA P-256 (NewKey does) or RSA of at least %d bits", pub, minRSABits)
	}
}

// checkNodeName keeps node names usable as a DNS SAN and harmless in logs and file names.
func checkNodeName(name string) error {
	if name == "" {
		return errors.New("node name is empty; give the node a name")
	}
	if len(name) > maxNodeNameLen {
		return fmt.Errorf("node name is %d bytes long; use at most %d", len(name), maxNodeNameLen)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
		default:
			return fmt.Errorf("node name %q contains %q; use only letters, digits, '-', '.' and '_'", name, r)
		}
	}
	return nil
}

// NodeIdentity extracts name and role from a node certificate. It does not check the signature or
// validity period: call it only on a certificate the TLS layer (or x509.Verify) has verified.
func NodeIdentity(cert *x509.Certificate) (name, role string, err error) {
	if cert == nil {
		return "", "", errors.New("no certificate; the peer must present an ssi node certificate")
	}
	subject := cert.Subject
	if cert.IsCA || !slices.Equal(subject.Organization, []string{nodeOrganization}) {
		return "", "", fmt.Errorf("certificate %q is not an ssi node certificate; the peer must use the certificate it received when it joined", subject.CommonName)
	}
	if len(subject.OrganizationalUnit) != 1 || (subject.OrganizationalUnit[0] != RoleServer && subject.OrganizationalUnit[0] != RoleClient) {
		return "", "", fmt.Errorf("node certificate %q has roles %q; want exactly one of %q or %q, re-join the node", subject.CommonName, subject.OrganizationalUnit, RoleServer, RoleClient)
	}
	if err := checkNodeName(subject.CommonName); err != nil {
		return "", "", fmt.Errorf("node certificate has a bad common name: %w", err)
	}
	if !slices.Contains(cert.DNSNames, subject.CommonName) {
		return "", "", fmt.Errorf("node certificate %q lacks its name as a DNS SAN; re-join the node to get a certificate from this version", subject.CommonName)
	}
	return subject.CommonName, subject.OrganizationalUnit[0], nil
}

// NodeKeyPair builds the TLS certificate a node presents: its own certificate followed by the CA
// certificate, so that a joining node can pin the CA from the chain alone. It refuses a
// certificate that the CA did not sign or a key that does not belong to the certificate, because
// either would only show up later as a puzzling handshake failure on the other end.
func NodeKeyPair(certPEM, keyPEM, caCertPEM []byte) (tls.Certificate, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load node key pair (the key must belong to the certificate): %w", err)
	}
	caCert, err := ParseCertPEM(caCertPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load node key pair: CA certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load node key pair: parse node certificate: %w", err)
	}
	if err := leaf.CheckSignatureFrom(caCert); err != nil {
		return tls.Certificate{}, fmt.Errorf("load node key pair: node certificate %q was not signed by this cluster CA; re-join the node: %w", leaf.Subject.CommonName, err)
	}
	pair.Leaf = leaf
	return withCAInChain(pair, caCert), nil
}

// withCAInChain returns cert with the CA certificate appended when the chain is only a leaf
// issued by that CA. Any other chain is left alone: appending our CA to a certificate from
// elsewhere would only make a client offer a certificate the server is bound to refuse.
func withCAInChain(cert tls.Certificate, ca *x509.Certificate) tls.Certificate {
	if ca == nil || len(cert.Certificate) != 1 {
		return cert
	}
	leaf := cert.Leaf
	if leaf == nil {
		parsed, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return cert // the handshake will report the broken certificate
		}
		leaf = parsed
	}
	if !bytes.Equal(leaf.RawIssuer, ca.RawSubject) {
		return cert
	}
	cert.Certificate = [][]byte{cert.Certificate[0], ca.Raw}
	return cert
}
