package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
)

// versions lists the spec versions Myelin serves and the unstable
// features clients look for.
//
// Up to v1.12 every Client-Server endpoint works but v1.7's
// POST /appservice/{appserviceId}/ping, which only application services
// call and which comes with them. Later versions are not listed yet: each
// has endpoints Myelin lacks (v1.16's extended profiles, for one). Clients
// gate features on these: Element uses authenticated media (v1.11) and
// /relations with recurse (v1.10) only from a server that lists them.
// Features of later versions that work are announced by their unstable
// flags, which clients check when the version is absent.
func (c *ClientAPI) versions(r *http.Request) (any, error) {
	return map[string]any{
		"versions": []string{
			"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
			"v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
		},
		"unstable_features": map[string]bool{
			// Dehydrated devices.
			"org.matrix.msc3814": true,
			// POST /login/get_token (v1.7), which matrix-js-sdk looks for
			// by this flag on servers without v1.7.
			"org.matrix.msc3882": c.loginTokensEnabled(),
			// Private read receipts (m.read.private, v1.4).
			"org.matrix.msc2285.stable": true,
			// Room summary (v1.15's /room_summary, also on MSC3266's
			// unstable paths), which Element looks for by this flag.
			"org.matrix.msc3266": true,
			// Delayed events, when the configuration allows them:
			// Element Call checks this flag.
			"org.matrix.msc4140": c.cfg.ClientAPI.MaxDelayedEventDelay > 0,
			// Peeking through /sync (POST /peek).
			"org.matrix.msc2753": true,
		},
	}, nil
}

// wellKnown is GET /.well-known/matrix/client. Without a public base URL
// there is nothing to advertise: the spec's answer is 404, not an empty
// base_url, which clients would try to resolve.
func (c *ClientAPI) wellKnown(r *http.Request) (any, error) {
	if c.cfg.ClientAPI.PublicBaseURL == "" {
		return nil, mxhttp.NotFound("No server discovery information available")
	}
	return map[string]any{
		"m.homeserver": map[string]string{"base_url": c.cfg.ClientAPI.PublicBaseURL},
	}, nil
}
