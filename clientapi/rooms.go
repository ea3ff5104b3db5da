package clientapi

import (
	"context"

	"github.com/gorilla/mux"
)

// roomRoutes registers room creation, sending, state, membership and aliases.
func (c *ClientAPI) roomRoutes(r *mux.Router) {}

// propagateProfile sends a new m.room.member event with userID's current
// profile into every room the user has joined.
func (c *ClientAPI) propagateProfile(ctx context.Context, userID string) error { return nil }

// leaveAllRooms makes userID leave every room it is joined to or invited to
// (deactivation).
func (c *ClientAPI) leaveAllRooms(ctx context.Context, userID string) error { return nil }
