package federationapi

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/fclient"
)

// BenchmarkVerify is the cost of authenticating one inbound request
// whose origin's key is cached: what every /send pays before its PDUs.
func BenchmarkVerify(b *testing.B) {
	p := newFedPair(b, "sqlite", nil)
	body := []byte(`{"origin":"x","origin_server_ts":1,"pdus":[],"edus":[{"edu_type":"m.typing","content":{"room_id":"!r:x","user_id":"@u:x","typing":true}}]}`)
	uri := "/_matrix/federation/v1/send/t1"
	fr := fclient.NewFederationRequest("PUT", p.originName, "recv.test", uri)
	if err := fr.SetContent(json.RawMessage(body)); err != nil {
		b.Fatal(err)
	}
	if err := fr.Sign(p.originName, p.origin.key.KeyID, p.origin.key.Private); err != nil {
		b.Fatal(err)
	}
	signed, err := fr.HTTPRequest()
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := io.ReadAll(signed.Body)
	u, _ := url.Parse("http://recv.test" + uri)
	run := func() error {
		r := httptest.NewRequest("PUT", u.String(), bytes.NewReader(raw))
		r.Header = signed.Header.Clone()
		_, err := p.recv.verify(r)
		return err
	}
	if err := run(); err != nil { // the first fetches the key
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := run(); err != nil {
			b.Fatal(err)
		}
	}
}
