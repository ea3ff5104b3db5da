package mxhttp

import (
	"context"
	"net/http"
	"strings"
)

// AccessToken returns the request's access token, from the Authorization
// header or the deprecated access_token query parameter. A header that is
// not "Bearer <token>" counts as no token (M_MISSING_TOKEN), as in Synapse:
// the client did not say which token it meant.
func AccessToken(r *http.Request) (string, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		tok = strings.TrimSpace(tok)
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" || strings.ContainsAny(tok, " \t") {
			return "", MissingToken()
		}
		return tok, nil
	}
	if tok := r.URL.Query().Get("access_token"); tok != "" {
		return tok, nil
	}
	return "", MissingToken()
}

// Authenticated wraps h so that it runs only with a valid access token;
// lookup resolves the token to the caller (and returns a Coded
// M_UNKNOWN_TOKEN error for a bad one).
func Authenticated[D any](lookup func(ctx context.Context, token string) (D, error), h func(r *http.Request, caller D) (any, error)) Handler {
	return func(r *http.Request) (any, error) {
		tok, err := AccessToken(r)
		if err != nil {
			return nil, err
		}
		caller, err := lookup(r.Context(), tok)
		if err != nil {
			return nil, err
		}
		return h(r, caller)
	}
}
