package clientapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gorilla/mux"
	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
)

// Push rules, pushers and notifications (spec: "Push Notifications").

const (
	// Spec limits of POST /pushers/set.
	maxPushKeyLen = 512
	maxAppIDLen   = 64

	defaultNotificationsLimit = 20
	maxNotificationsLimit     = 100
)

func (c *ClientAPI) pushRoutes(r *mux.Router) {
	// Everything under /pushrules/ is parsed by hand: the spec and sytest
	// give a trailing slash a meaning (the whole scope or kind) that
	// route patterns cannot express, and ask for 400 rather than 404 for
	// paths of the wrong shape. /pushrules itself is not routed: 404.
	r.PathPrefix("/pushrules/").Handler(c.authed(c.pushRules))
	r.Handle("/pushers", c.authed(c.getPushers)).Methods(http.MethodGet)
	r.Handle("/pushers/set", c.authed(c.setPusher)).Methods(http.MethodPost)
	r.Handle("/notifications", c.authed(c.getNotifications)).Methods(http.MethodGet)
}

// pushRulePath splits the path after /pushrules/ into its decoded
// segments.
func pushRulePath(r *http.Request) ([]string, error) {
	p := r.URL.EscapedPath()
	i := strings.Index(p, "/pushrules/")
	if i < 0 {
		return nil, mxhttp.Unrecognized(http.StatusNotFound)
	}
	segs := strings.Split(p[i+len("/pushrules/"):], "/")
	for j, s := range segs {
		d, err := url.PathUnescape(s)
		if err != nil {
			return nil, mxhttp.InvalidParam("malformed path segment %.50q", s)
		}
		// What the edge's table does for routed variables: rule IDs are
		// stored in the user's m.push_rules.
		if err := mxid.Opaque(d, mxid.MaxLen); err != nil {
			return nil, mxhttp.InvalidParam("push rule path segment: %v", err)
		}
		segs[j] = d
	}
	return segs, nil
}

// pushRules serves GET /pushrules/, GET /pushrules/{scope}/ and
// GET /pushrules/{scope}/{kind}/, and GET, PUT and DELETE of
// /pushrules/{scope}/{kind}/{ruleId} and of its /enabled and /actions.
func (c *ClientAPI) pushRules(r *http.Request, dev *uapi.Device) (any, error) {
	segs, err := pushRulePath(r)
	if err != nil {
		return nil, err
	}
	ctx, get := r.Context(), r.Method == http.MethodGet
	// What the path names, level by level: "" at the end of a path that
	// ends in a slash means "all of this level", which only GET reads.
	if len(segs) == 1 && segs[0] == "" {
		if !get {
			return nil, mxhttp.InvalidParam("a push rule path needs a scope")
		}
		rs, err := c.users.PushRules(ctx, dev.UserID)
		if err != nil {
			return nil, err
		}
		return map[string]*uapi.PushRuleset{"global": rs}, nil
	}
	if segs[0] != "global" {
		return nil, mxhttp.InvalidParam("unknown push rule scope %q: only global is supported", segs[0])
	}
	if len(segs) == 1 {
		return nil, mxhttp.InvalidParam("a push rule path needs a kind (or a trailing slash)")
	}
	if len(segs) == 2 && segs[1] == "" {
		if !get {
			return nil, mxhttp.InvalidParam("a push rule path needs a kind")
		}
		return c.users.PushRules(ctx, dev.UserID)
	}
	kind := uapi.PushRuleKind(segs[1])
	if !kind.Valid() {
		return nil, mxhttp.InvalidParam("unknown push rule kind %q", segs[1])
	}
	if len(segs) == 2 {
		return nil, mxhttp.InvalidParam("a push rule path needs a rule ID (or a trailing slash)")
	}
	if len(segs) == 3 && segs[2] == "" {
		if !get {
			return nil, mxhttp.InvalidParam("the rule ID must not be empty")
		}
		rs, err := c.users.PushRules(ctx, dev.UserID)
		if err != nil {
			return nil, err
		}
		return *rs.Kind(kind), nil
	}
	ruleID := segs[2]
	switch {
	case len(segs) == 3:
		return c.pushRule(r, dev, kind, ruleID)
	case len(segs) == 4 && (segs[3] == "enabled" || segs[3] == "actions"):
		return c.pushRuleAttr(r, dev, kind, ruleID, segs[3])
	case len(segs) == 4:
		return nil, mxhttp.InvalidParam("unknown push rule attribute %q", segs[3])
	}
	return nil, mxhttp.InvalidParam("rule IDs must not contain slashes")
}

// findPushRule returns the user's rule, or M_NOT_FOUND.
func (c *ClientAPI) findPushRule(ctx context.Context, userID string, kind uapi.PushRuleKind, ruleID string) (*uapi.PushRule, error) {
	rs, err := c.users.PushRules(ctx, userID)
	if err != nil {
		return nil, err
	}
	rule := rs.Find(kind, ruleID)
	if rule == nil {
		return nil, mxhttp.NotFound("Unknown push rule %s", ruleID)
	}
	return rule, nil
}

func (c *ClientAPI) pushRule(r *http.Request, dev *uapi.Device, kind uapi.PushRuleKind, ruleID string) (any, error) {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		return c.findPushRule(ctx, dev.UserID, kind, ruleID)
	case http.MethodDelete:
		if err := c.users.DeletePushRule(ctx, dev.UserID, kind, ruleID); err != nil {
			if uapi.IsNotFound(err) {
				return nil, mxhttp.NotFound("Unknown push rule %s", ruleID)
			}
			return nil, err
		}
		return struct{}{}, nil
	case http.MethodPut:
		var rule uapi.PushRule
		if err := mxhttp.ReadJSON(r, &rule); err != nil {
			return nil, err
		}
		rule.RuleID = ruleID
		q := r.URL.Query()
		if err := c.users.PutPushRule(ctx, dev.UserID, kind, rule, q.Get("before"), q.Get("after")); err != nil {
			if uapi.IsNotFound(err) {
				return nil, mxhttp.NotFound("No push rule to put the rule before or after")
			}
			return nil, err
		}
		return struct{}{}, nil
	}
	return nil, mxhttp.Unrecognized(http.StatusMethodNotAllowed)
}

// pushRuleAttrBody is the body of PUT .../enabled and .../actions.
type pushRuleAttrBody struct {
	Enabled *bool              `json:"enabled"`
	Actions *[]uapi.PushAction `json:"actions"`
}

func (c *ClientAPI) pushRuleAttr(r *http.Request, dev *uapi.Device, kind uapi.PushRuleKind, ruleID, attr string) (any, error) {
	ctx := r.Context()
	switch r.Method {
	case http.MethodGet:
		rule, err := c.findPushRule(ctx, dev.UserID, kind, ruleID)
		if err != nil {
			return nil, err
		}
		if attr == "enabled" {
			return map[string]bool{"enabled": rule.Enabled}, nil
		}
		return map[string][]uapi.PushAction{"actions": rule.Actions}, nil
	case http.MethodPut:
		var body pushRuleAttrBody
		if err := mxhttp.ReadJSON(r, &body); err != nil {
			return nil, err
		}
		var err error
		switch {
		case attr == "enabled" && body.Enabled == nil:
			return nil, mxhttp.MissingParam("enabled is required")
		case attr == "enabled":
			err = c.users.SetPushRuleEnabled(ctx, dev.UserID, kind, ruleID, *body.Enabled)
		case body.Actions == nil:
			return nil, mxhttp.MissingParam("actions is required")
		default:
			err = c.users.SetPushRuleActions(ctx, dev.UserID, kind, ruleID, *body.Actions)
		}
		if uapi.IsNotFound(err) {
			return nil, mxhttp.NotFound("Unknown push rule %s", ruleID)
		}
		if err != nil {
			return nil, err
		}
		return struct{}{}, nil
	}
	return nil, mxhttp.Unrecognized(http.StatusMethodNotAllowed)
}

func (c *ClientAPI) getPushers(r *http.Request, dev *uapi.Device) (any, error) {
	pushers, err := c.users.Pushers(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	return map[string][]uapi.Pusher{"pushers": pushers}, nil
}

// setPusherRequest is the body of POST /pushers/set. Kind is a string, or
// null to delete the pusher.
type setPusherRequest struct {
	PushKey           *string         `json:"pushkey"`
	Kind              json.RawMessage `json:"kind"`
	AppID             *string         `json:"app_id"`
	AppDisplayName    *string         `json:"app_display_name"`
	DeviceDisplayName *string         `json:"device_display_name"`
	ProfileTag        string          `json:"profile_tag"`
	Lang              *string         `json:"lang"`
	Data              json.RawMessage `json:"data"`
	Append            bool            `json:"append"`
}

func (q *setPusherRequest) Validate() error {
	switch {
	case q.PushKey == nil || *q.PushKey == "":
		return mxhttp.MissingParam("pushkey is required")
	case len(*q.PushKey) > maxPushKeyLen:
		return mxhttp.InvalidParam("pushkey is longer than %d bytes", maxPushKeyLen)
	case q.AppID == nil || *q.AppID == "":
		return mxhttp.MissingParam("app_id is required")
	case utf8.RuneCountInString(*q.AppID) > maxAppIDLen:
		return mxhttp.InvalidParam("app_id is longer than %d characters", maxAppIDLen)
	case len(q.Kind) == 0:
		return mxhttp.MissingParam("kind is required")
	}
	if q.deleting() {
		return nil
	}
	var kind string
	if json.Unmarshal(q.Kind, &kind) != nil || kind == "" {
		return mxhttp.BadJSON("kind must be a string or null")
	}
	switch {
	case q.AppDisplayName == nil:
		return mxhttp.MissingParam("app_display_name is required")
	case q.DeviceDisplayName == nil:
		return mxhttp.MissingParam("device_display_name is required")
	case q.Lang == nil:
		return mxhttp.MissingParam("lang is required")
	case len(q.Data) == 0 || q.Data[0] != '{':
		return mxhttp.MissingParam("data must be an object")
	}
	return nil
}

func (q *setPusherRequest) deleting() bool { return string(q.Kind) == "null" }

// setPusher is POST /pushers/set: create, update or (kind null) delete
// one of the caller's pushers.
func (c *ClientAPI) setPusher(r *http.Request, dev *uapi.Device) (any, error) {
	var req setPusherRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	p := uapi.Pusher{PushKey: *req.PushKey, AppID: *req.AppID, ProfileTag: req.ProfileTag}
	if !req.deleting() {
		_ = json.Unmarshal(req.Kind, &p.Kind)
		p.AppDisplayName, p.DeviceDisplayName, p.Lang = *req.AppDisplayName, *req.DeviceDisplayName, *req.Lang
		p.Data = req.Data
	}
	if err := c.users.SetPusher(r.Context(), dev.UserID, dev.SessionID, p, req.Append); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// getNotifications is GET /notifications: the events that notified the
// caller, newest first, paged by next_token.
func (c *ClientAPI) getNotifications(r *http.Request, dev *uapi.Device) (any, error) {
	q := r.URL.Query()
	var from int64
	if s := q.Get("from"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return nil, mxhttp.InvalidParam("from is not a token this server gave")
		}
		from = n
	}
	limit := defaultNotificationsLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		limit = min(n, maxNotificationsLimit)
	}
	onlyHighlight := q.Get("only") == "highlight"
	list, next, err := c.users.Notifications(r.Context(), dev.UserID, from, limit, onlyHighlight)
	if err != nil {
		return nil, err
	}
	resp := struct {
		Notifications []uapi.Notification `json:"notifications"`
		NextToken     string              `json:"next_token,omitempty"`
	}{Notifications: list}
	if next > 0 {
		resp.NextToken = strconv.FormatInt(next, 10)
	}
	return resp, nil
}

// copyRoomPushRules gives the local members of an upgraded room the room
// rules they had for it in the new room too, as Synapse does (the rules
// are the user's way of muting or favouring a room, which lives on in its
// replacement).
func (c *ClientAPI) copyRoomPushRules(ctx context.Context, oldID, newID string, state map[gmsl.StateKeyTuple]gmsl.PDU) {
	for key, ev := range state {
		if key.EventType != spec.MRoomMember || !strings.HasSuffix(key.StateKey, ":"+c.cfg.ServerName) || membershipOf(ev) != spec.Join {
			continue
		}
		c.copyUserPushRules(ctx, key.StateKey, oldID, newID)
	}
}

// copyUserPushRules gives userID's room push rule for oldID to newID,
// unless newID has one already.
func (c *ClientAPI) copyUserPushRules(ctx context.Context, userID, oldID, newID string) {
	log := mxhttp.Logger(ctx).WithField("user_id", userID)
	rs, err := c.users.PushRules(ctx, userID)
	if err != nil {
		log.WithError(err).Warn("room upgrade: could not read push rules")
		return
	}
	old := rs.Find(uapi.PushRoom, oldID)
	if old == nil || old.Default || rs.Find(uapi.PushRoom, newID) != nil {
		return
	}
	rule := *old
	rule.RuleID = newID
	err = c.users.PutPushRule(ctx, userID, uapi.PushRoom, rule, oldID, "")
	if err == nil && !old.Enabled {
		err = c.users.SetPushRuleEnabled(ctx, userID, uapi.PushRoom, newID, false)
	}
	if err != nil {
		log.WithError(err).Warn("room upgrade: could not copy push rules")
	}
}
