package clientapi

import (
	"net/http"

	"github.com/gorilla/mux"
)

// accountRoutes registers registration, login, devices, profile and
// account data. (placeholder; replaced by the account work)
func (c *ClientAPI) accountRoutes(r *mux.Router) {}

func (c *ClientAPI) sharedSecretNonce(r *http.Request) (any, error)    { return nil, nil }
func (c *ClientAPI) sharedSecretRegister(r *http.Request) (any, error) { return nil, nil }
