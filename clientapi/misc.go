package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
)

// versions lists the spec versions whose endpoints Myelin serves in full.
func (c *ClientAPI) versions(r *http.Request) (any, error) {
	return map[string]any{
		"versions": []string{
			"r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
			"v1.1", "v1.2", "v1.3", "v1.4", "v1.5",
		},
		"unstable_features": map[string]bool{
			// Dehydrated devices.
			"org.matrix.msc3814": true,
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
