package clientapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// Reporting content (spec: "Reporting content"): a local user reports an
// event, a room or a user; the roomserver stores the report and server
// admins list and delete reports with Synapse's admin API
// (/_synapse/admin/v1/event_reports, and room_reports and user_reports
// made alike).

// maxReasonBytes bounds a report's reason: text for an admin to read.
const maxReasonBytes = 4096

func (c *ClientAPI) reportRoutes(r *mux.Router) {
	r.Handle("/rooms/{roomId}/report/{eventId}", c.authed(c.reportEvent)).Methods(http.MethodPost)
	r.Handle("/rooms/{roomId}/report", c.authed(c.reportRoom)).Methods(http.MethodPost)
	r.Handle("/users/{userId}/report", c.authed(c.reportUser)).Methods(http.MethodPost)
}

func (c *ClientAPI) reportAdminRoutes(root *mux.Router) {
	const a = "/_synapse/admin/v1/"
	for _, kind := range []string{rsapi.ReportEvent, rsapi.ReportRoom, rsapi.ReportUser} {
		root.Handle(a+kind+"_reports", c.authed(c.adminOnly(c.listReports(kind)))).Methods(http.MethodGet)
		root.Handle(a+kind+"_reports/{reportId}", c.authed(c.adminOnly(c.getReport(kind)))).Methods(http.MethodGet)
		root.Handle(a+kind+"_reports/{reportId}", c.authed(c.adminOnly(c.deleteReport(kind)))).Methods(http.MethodDelete)
	}
}

type reportRequest struct {
	Reason *string `json:"reason"`
	// Score is deprecated but still sent by some clients: an integer
	// from -100 (most offensive) to 0.
	Score *int64 `json:"score"`
}

// readReport reads a report's body; required says the reason must be present.
func readReport(r *http.Request, required bool) (*reportRequest, error) {
	var req reportRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	if req.Reason == nil && required {
		return nil, mxhttp.MissingParam("reason is required")
	}
	if req.Reason != nil && len(*req.Reason) > maxReasonBytes {
		return nil, mxhttp.InvalidParam("reason is longer than %d bytes", maxReasonBytes)
	}
	if req.Score != nil && (*req.Score < -100 || *req.Score > 0) {
		return nil, mxhttp.InvalidParam("score must be an integer from -100 to 0")
	}
	if req.Reason == nil {
		req.Reason = new(string)
	}
	return &req, nil
}

// reportEvent is POST /rooms/{roomId}/report/{eventId}. The reporter must
// be joined to the room and the event one of the room's; otherwise 404,
// as the spec says.
func (c *ClientAPI) reportEvent(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID, eventID := mxhttp.Var(r, "roomId"), mxhttp.Var(r, "eventId")
	req, err := readReport(r, false)
	if err != nil {
		return nil, err
	}
	notFound := mxhttp.NotFound("Event not found, or you are not joined to its room")
	m, err := c.rooms.Membership(ctx, roomID, dev.UserID)
	if errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, notFound
	}
	if err != nil {
		return nil, fmt.Errorf("membership of %s in %s: %w", dev.UserID, roomID, err)
	}
	if m.Membership != spec.Join {
		return nil, notFound
	}
	evs, err := c.rooms.Events(ctx, []string{eventID})
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 || evs[0].RoomID().String() != roomID {
		return nil, notFound
	}
	sender := string(evs[0].SenderID())
	_, err = c.rooms.AddReport(ctx, rsapi.Report{Kind: rsapi.ReportEvent, RoomID: roomID, EventID: eventID,
		TargetUserID: sender, Reporter: dev.UserID, Reason: *req.Reason, Score: req.Score, ReceivedTS: c.now().UnixMilli()})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// reportRoom is POST /rooms/{roomId}/report: any room this server knows,
// whether or not the reporter is in it.
func (c *ClientAPI) reportRoom(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	roomID := mxhttp.Var(r, "roomId")
	req, err := readReport(r, true)
	if err != nil {
		return nil, err
	}
	if _, err := c.rooms.RoomVersion(ctx, roomID); errors.Is(err, rsapi.ErrRoomNotFound) {
		return nil, mxhttp.NotFound("Room %s not found", roomID)
	} else if err != nil {
		return nil, err
	}
	_, err = c.rooms.AddReport(ctx, rsapi.Report{Kind: rsapi.ReportRoom, RoomID: roomID, Reporter: dev.UserID,
		Reason: *req.Reason, ReceivedTS: c.now().UnixMilli()})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// reportUser is POST /users/{userId}/report: a local user must exist; a
// user of another server is taken on trust (this server cannot know).
func (c *ClientAPI) reportUser(r *http.Request, dev *uapi.Device) (any, error) {
	ctx := r.Context()
	userID := mxhttp.Var(r, "userId")
	req, err := readReport(r, true)
	if err != nil {
		return nil, err
	}
	if uid, err := spec.NewUserID(userID, true); err == nil && string(uid.Domain()) == c.cfg.ServerName {
		if _, err := c.users.Account(ctx, userID); uapi.IsNotFound(err) {
			return nil, mxhttp.NotFound("User %s not found", userID)
		} else if err != nil {
			return nil, err
		}
	}
	_, err = c.rooms.AddReport(ctx, rsapi.Report{Kind: rsapi.ReportUser, TargetUserID: userID, Reporter: dev.UserID,
		Reason: *req.Reason, ReceivedTS: c.now().UnixMilli()})
	if err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// adminReport is a report as Synapse's admin API shows it: an event
// report names the event's sender and its room's name and alias.
type adminReport struct {
	rsapi.Report
	Sender         string `json:"sender,omitempty"`
	Name           string `json:"name,omitempty"`
	CanonicalAlias string `json:"canonical_alias,omitempty"`
}

// listReports is GET /_synapse/admin/v1/{kind}_reports: from (an offset),
// limit (100), dir (b, newest first, or f), and the filters room_id,
// user_id (the reporter) and, for events, event_sender_user_id.
func (c *ClientAPI) listReports(kind string) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		ctx := r.Context()
		q := r.URL.Query()
		from, err := intParam(q.Get("from"), 0)
		if err != nil || from < 0 {
			return nil, mxhttp.InvalidParam("from must be a non-negative integer")
		}
		limit, err := intParam(q.Get("limit"), 100)
		if err != nil || limit < 0 {
			return nil, mxhttp.InvalidParam("limit must be a non-negative integer")
		}
		dir := q.Get("dir")
		if dir != "" && dir != "b" && dir != "f" {
			return nil, mxhttp.InvalidParam("dir must be b or f")
		}
		rq := rsapi.ReportsQuery{Kind: kind, From: from, Limit: min(limit, 1000), Forwards: dir == "f",
			RoomID: q.Get("room_id"), Reporter: q.Get("user_id"), TargetUserID: q.Get("event_sender_user_id")}
		if kind == rsapi.ReportUser {
			rq.TargetUserID = q.Get("target_user_id")
		}
		for name, v := range map[string]string{"room_id": rq.RoomID, "user_id": rq.Reporter, "target": rq.TargetUserID} {
			check := mxid.UserID
			if name == "room_id" {
				check = mxid.RoomID
			}
			if v != "" {
				if err := mxhttp.CheckParam(name, v, check); err != nil {
					return nil, err
				}
			}
		}
		reports, total, err := c.rooms.Reports(ctx, rq)
		if err != nil {
			return nil, err
		}
		out := make([]adminReport, 0, len(reports))
		names := map[string]*rsapi.RoomSummary{}
		for _, rep := range reports {
			out = append(out, c.adminReport(r, rep, names))
		}
		resp := map[string]any{kind + "_reports": out, "total": total}
		if from+len(reports) < total {
			resp["next_token"] = from + len(reports)
		}
		return resp, nil
	}
}

// adminReport adds to rep what an admin reads beside it.
func (c *ClientAPI) adminReport(r *http.Request, rep rsapi.Report, rooms map[string]*rsapi.RoomSummary) adminReport {
	out := adminReport{Report: rep}
	if rep.Kind == rsapi.ReportEvent {
		out.Sender = rep.TargetUserID
	}
	if rep.RoomID == "" {
		return out
	}
	sum, ok := rooms[rep.RoomID]
	if !ok {
		sum, _ = c.rooms.RoomSummary(r.Context(), rep.RoomID)
		rooms[rep.RoomID] = sum
	}
	if sum != nil {
		out.Name, out.CanonicalAlias = sum.Name, sum.CanonicalAlias
	}
	return out
}

// reportOf reads the report of the path, of the route's kind.
func (c *ClientAPI) reportOf(r *http.Request, kind string) (*rsapi.Report, error) {
	id, _ := strconv.ParseInt(mxhttp.Var(r, "reportId"), 10, 64)
	rep, err := c.rooms.Report(r.Context(), id)
	if errors.Is(err, rsapi.ErrReportNotFound) || (err == nil && rep.Kind != kind) {
		return nil, mxhttp.NotFound("Report not found")
	}
	return rep, err
}

// getReport is GET /_synapse/admin/v1/{kind}_reports/{reportId}; an
// event report comes with the event (event_json).
func (c *ClientAPI) getReport(kind string) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		rep, err := c.reportOf(r, kind)
		if err != nil {
			return nil, err
		}
		out := struct {
			adminReport
			EventJSON any `json:"event_json,omitempty"`
		}{adminReport: c.adminReport(r, *rep, map[string]*rsapi.RoomSummary{})}
		if rep.EventID != "" {
			evs, err := c.rooms.Events(r.Context(), []string{rep.EventID})
			if err != nil {
				return nil, err
			}
			if len(evs) == 1 {
				out.EventJSON = json.RawMessage(evs[0].JSON())
			}
		}
		return out, nil
	}
}

// deleteReport is DELETE /_synapse/admin/v1/{kind}_reports/{reportId}.
func (c *ClientAPI) deleteReport(kind string) func(r *http.Request, dev *uapi.Device) (any, error) {
	return func(r *http.Request, dev *uapi.Device) (any, error) {
		rep, err := c.reportOf(r, kind)
		if err != nil {
			return nil, err
		}
		if err := c.rooms.DeleteReport(r.Context(), rep.ID); err != nil {
			if errors.Is(err, rsapi.ErrReportNotFound) {
				return nil, mxhttp.NotFound("Report not found")
			}
			return nil, err
		}
		return struct{}{}, nil
	}
}
