package clientapi

// uiaSessions tracks user-interactive authentication sessions.
// (placeholder; replaced by the account work)
type uiaSessions struct{}

func newUIASessions() *uiaSessions { return &uiaSessions{} }
