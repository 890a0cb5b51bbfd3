// The harness's Go TLS client: crypto/tls with the key on a PKCS#11 token
// through ThalesIgnite/crypto11 (Debian: golang-github-thalesignite-crypto11-dev).
//
//	p11tls-go -module M -token LABEL -id HEX -cert PEM -ca PEM -host H -port P -tls 1.2|1.3
//
// The PIN is the first line of standard input, never argv. One handshake per
// run; on success it prints "ok protocol=TLSv1.x cipher=NAME" and exits 0, on
// failure "fail error=..." (with the CKR_ code crypto11 reports) and exits 1.
// Built offline by the harness (harness/clients/go.py) with GO111MODULE=off
// and GOPATH=/usr/share/gocode: no module is downloaded.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/ThalesIgnite/crypto11"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("fail error=%s\n", strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " "))
	os.Exit(1)
}

func main() {
	module := flag.String("module", "", "PKCS#11 module")
	token := flag.String("token", "", "token label")
	id := flag.String("id", "", "CKA_ID of the key, hex")
	certFile := flag.String("cert", "", "client certificate, PEM")
	caFile := flag.String("ca", "", "CA of the server, PEM")
	host := flag.String("host", "127.0.0.1", "server host")
	port := flag.String("port", "", "server port")
	version := flag.String("tls", "1.3", "TLS version: 1.2 or 1.3")
	timeout := flag.Duration("timeout", 20*time.Second, "handshake timeout")
	flag.Parse()

	pin, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && pin == "" {
		fail("no PIN on standard input")
	}
	pin = strings.TrimRight(pin, "\r\n")

	keyID, err := hex.DecodeString(*id)
	if err != nil {
		fail("bad -id %q: %v", *id, err)
	}
	certPEM, err := os.ReadFile(*certFile)
	if err != nil {
		fail("%v", err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		fail("%s: no PEM certificate", *certFile)
	}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fail("%v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		fail("%s: no PEM certificate", *caFile)
	}
	tlsVersion := map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}[*version]
	if tlsVersion == 0 {
		fail("bad -tls %q: 1.2 or 1.3", *version)
	}

	ctx, err := crypto11.Configure(&crypto11.Config{Path: *module, TokenLabel: *token, Pin: pin})
	if err != nil {
		fail("crypto11.Configure: %v", err)
	}
	defer ctx.Close()
	signer, err := ctx.FindKeyPair(keyID, nil)
	if err != nil {
		fail("FindKeyPair: %v", err)
	}
	if signer == nil {
		fail("no key pair with CKA_ID %s on token %q", *id, *token)
	}

	config := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{block.Bytes}, PrivateKey: signer}},
		RootCAs:      roots,
		ServerName:   *host,
		MinVersion:   tlsVersion,
		MaxVersion:   tlsVersion,
	}
	dialer := &net.Dialer{Timeout: *timeout}
	conn, err := tls.DialWithDialer(dialer, "tcp", net.JoinHostPort(*host, *port), config)
	if err != nil {
		fail("handshake: %v", err)
	}
	defer conn.Close()
	state := conn.ConnectionState()
	names := map[uint16]string{tls.VersionTLS12: "TLSv1.2", tls.VersionTLS13: "TLSv1.3"}
	// TLS 1.3 sends the client's Certificate after the server's Finished: read
	// once so that a server that rejects it is seen here too.
	_ = conn.SetReadDeadline(time.Now().Add(*timeout))
	if _, err := conn.Read(make([]byte, 1)); err != nil && !isClosed(err) {
		fail("after the handshake: %v", err)
	}
	fmt.Printf("ok protocol=%s cipher=%s\n", names[state.Version], tls.CipherSuiteName(state.CipherSuite))
}

// isClosed: the harness's server closes the connection after the handshake.
func isClosed(err error) bool {
	text := err.Error()
	return strings.Contains(text, "EOF") || strings.Contains(text, "close notify") ||
		strings.Contains(text, "connection reset")
}
