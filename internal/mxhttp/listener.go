package mxhttp

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
)

// PlainErrorListener wraps a plain-TCP listener so that the answers net/http
// writes by itself, before any handler can run, to requests it cannot
// parse (a malformed percent-escape such as %ZZ in the path, a space in the
// request target, a bad header line) are Matrix JSON errors, as every
// other refusal is, rather than a text/plain "400 Bad Request".
//
// net/http has no hook for these: it writes a fixed text straight to the
// connection and closes it (net/http server.go, conn.serve). So the
// connection's Write recognises that text (a status line followed at once
// by "Content-Type: text/plain; charset=utf-8" and "Connection: close",
// which no response from a handler has: those carry a Date header, and
// Go writes headers in sorted order) and writes the JSON form instead. A
// write costs one length test and one byte comparison; ReadFrom and
// CloseWrite go to the TCP connection as before, so sendfile and splice
// still apply.
//
// It is for plain listeners only. Under TLS the text is written inside the
// TLS stream, so the wrapper would have to sit above TLS; but net/http
// runs the handshake under its deadline and hands an ALPN-negotiated
// connection to HTTP/2 only when the connection it accepts is a *tls.Conn:
// a wrapped one would answer HTTP/1 to clients that negotiated h2, unless
// HTTP/2 were turned off. (HTTP/2 has no such text either: it resets the
// stream.) There the plain-text answer stays; the usual deployment puts a
// reverse proxy in front that talks plain HTTP/1.1 to Myelin, where the
// wrapper applies.
func PlainErrorListener(ln net.Listener) net.Listener { return errListener{ln} }

type errListener struct{ net.Listener }

func (l errListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &errConn{Conn: c}, nil
}

type errConn struct{ net.Conn }

// plainErrorHeaders follow the status line of net/http's own error answers.
var plainErrorHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

var statusLinePrefix = []byte("HTTP/1.1 ")

func (c *errConn) Write(p []byte) (int, error) {
	// "HTTP/1.1 4xx" or "HTTP/1.1 5xx" at the start of a write, then the
	// fixed headers right after the status line.
	if len(p) > len(statusLinePrefix)+3 && p[9] >= '4' && bytes.HasPrefix(p, statusLinePrefix) {
		if end := bytes.IndexByte(p, '\r'); end > 0 && bytes.HasPrefix(p[end:], plainErrorHeaders) {
			if status, err := strconv.Atoi(string(p[9:12])); err == nil {
				if _, err := c.Conn.Write(matrixErrorResponse(status)); err != nil {
					return 0, err
				}
				return len(p), nil
			}
		}
	}
	return c.Conn.Write(p)
}

// ReadFrom keeps the TCP connection's sendfile and splice.
func (c *errConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite lets net/http half-close the connection as it does a TCP one.
func (c *errConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// matrixErrorResponse is the whole HTTP response for one of net/http's
// own refusals: M_TOO_LARGE for headers too large (431), M_UNRECOGNIZED
// for a request it could not parse.
func matrixErrorResponse(status int) []byte {
	code, msg := "M_UNRECOGNIZED", "The request could not be parsed (a malformed path, escape or header)"
	if status == 431 {
		code, msg = "M_TOO_LARGE", "Request headers too large"
	}
	body, _ := json.Marshal(map[string]string{"errcode": code, "error": msg})
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\nAccess-Control-Allow-Origin: *\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
}
