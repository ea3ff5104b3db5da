package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// apiError is a non-2xx answer from the homeserver.
type apiError struct {
	Method, Path string
	Status       int
	Code         string // Matrix errcode, when the body had one
	Message      string
}

func (e *apiError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.Path, e.Status, e.Message)
}

var errTimeout = errors.New("request timed out")

const clientPrefix = "/_matrix/client/v3"

// Client is one Matrix user (one device) talking to the homeserver.
type Client struct {
	base string
	hc   *http.Client

	UserID   string
	Token    string
	DeviceID string
}

// maxRetries bounds the retries of a request answered with 429
// M_LIMIT_EXCEEDED (rate limits should be off for a load run; if they are
// not, waiting is more useful than failing).
const maxRetries = 5

// do sends a request and returns the response body. A 2xx answer returns
// its body; anything else returns an *apiError. timeout bounds the whole
// request including reading the body.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body any, timeout time.Duration) ([]byte, error) {
	var raw []byte
	if body != nil {
		var err error
		if raw, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	for attempt := 0; ; attempt++ {
		b, err := c.once(ctx, method, u, raw, timeout)
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || attempt == maxRetries {
			if ae != nil {
				ae.Path = path
			}
			return b, err
		}
		wait := time.Second
		var lim struct {
			RetryAfterMS int64 `json:"retry_after_ms"`
		}
		if json.Unmarshal(b, &lim) == nil && lim.RetryAfterMS > 0 {
			wait = min(time.Duration(lim.RetryAfterMS)*time.Millisecond, 10*time.Second)
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func (c *Client) once(ctx context.Context, method, u string, body []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, timeout, errTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if context.Cause(ctx) == errTimeout {
			return nil, fmt.Errorf("%s %s: %w", method, req.URL.Path, errTimeout)
		}
		return nil, err
	}
	defer resp.Body.Close()
	// Reading the body to the end lets the connection be reused.
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		if context.Cause(ctx) == errTimeout {
			return nil, fmt.Errorf("%s %s: reading body: %w", method, req.URL.Path, errTimeout)
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		ae := &apiError{Method: method, Status: resp.StatusCode}
		var m struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(b, &m) == nil {
			ae.Code, ae.Message = m.ErrCode, m.Error
		} else {
			ae.Message = string(b[:min(len(b), 200)])
		}
		return b, ae
	}
	return b, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (c *Client) doJSON(ctx context.Context, method, path string, query url.Values, body, out any, timeout time.Duration) error {
	b, err := c.do(ctx, method, path, query, body, timeout)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

const reqTimeout = 60 * time.Second

// CreateRoom creates a room anyone on the server can join.
func (c *Client) CreateRoom(ctx context.Context, name string) (string, error) {
	var out struct {
		RoomID string `json:"room_id"`
	}
	body := map[string]any{"preset": "public_chat", "name": name, "visibility": "private"}
	if err := c.doJSON(ctx, http.MethodPost, clientPrefix+"/createRoom", nil, body, &out, reqTimeout); err != nil {
		return "", err
	}
	return out.RoomID, nil
}

// Join joins a room by ID.
func (c *Client) Join(ctx context.Context, roomID string) error {
	return c.doJSON(ctx, http.MethodPost, clientPrefix+"/rooms/"+url.PathEscape(roomID)+"/join", nil, struct{}{}, nil, reqTimeout)
}

// Send sends an m.room.message event and returns its ID.
func (c *Client) Send(ctx context.Context, roomID, txnID string, content any) (string, error) {
	var out struct {
		EventID string `json:"event_id"`
	}
	p := clientPrefix + "/rooms/" + url.PathEscape(roomID) + "/send/m.room.message/" + url.PathEscape(txnID)
	if err := c.doJSON(ctx, http.MethodPut, p, nil, content, &out, reqTimeout); err != nil {
		return "", err
	}
	return out.EventID, nil
}

// loadContent is the content of the messages the tool sends: a sequence
// number and the send time let receivers measure delivery.
type loadContent struct {
	MsgType string `json:"msgtype"`
	Body    string `json:"body"`
	Seq     int64  `json:"load_seq"`
	// Microseconds: canonical JSON allows integers up to 2^53 only.
	SentUS int64 `json:"load_sent_us"`
}

// syncResponse holds the parts of a /sync answer the tool reads.
type syncResponse struct {
	NextBatch string `json:"next_batch"`
	Presence  struct {
		Events []json.RawMessage `json:"events"`
	} `json:"presence"`
	Rooms struct {
		Join map[string]struct {
			Timeline struct {
				Events []struct {
					Type     string  `json:"type"`
					Sender   string  `json:"sender"`
					StateKey *string `json:"state_key"`
					Content  struct {
						Seq    *int64 `json:"load_seq"`
						SentUS int64  `json:"load_sent_us"`
					} `json:"content"`
				} `json:"events"`
				Limited   bool   `json:"limited"`
				PrevBatch string `json:"prev_batch"`
			} `json:"timeline"`
			State struct {
				Events []struct {
					Type     string  `json:"type"`
					StateKey *string `json:"state_key"`
				} `json:"events"`
			} `json:"state"`
		} `json:"join"`
	} `json:"rooms"`
}

// empty reports whether the answer holds nothing the tool counts as news
// (rooms or presence): the answer to a long-poll that timed out.
func (r *syncResponse) empty() bool {
	return len(r.Rooms.Join) == 0 && len(r.Presence.Events) == 0
}

// Sync calls /sync. since empty is an initial sync; timeout is the
// long-poll time the server may wait. It also returns the body's size.
func (c *Client) Sync(ctx context.Context, since, filter string, timeout time.Duration) (*syncResponse, int, error) {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	q.Set("timeout", strconv.FormatInt(timeout.Milliseconds(), 10))
	// An initial sync of a big room can take a while; a long-poll takes
	// its timeout plus the server's work.
	b, err := c.do(ctx, http.MethodGet, clientPrefix+"/sync", q, nil, timeout+5*time.Minute)
	if err != nil {
		return nil, len(b), err
	}
	var out syncResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, len(b), fmt.Errorf("GET /sync: decode response: %w", err)
	}
	return &out, len(b), nil
}

// messagesResponse holds the parts of a /messages answer the tool reads.
type messagesResponse struct {
	Chunk []struct {
		Type string `json:"type"`
	} `json:"chunk"`
	State []json.RawMessage `json:"state"`
	Start string            `json:"start"`
	End   string            `json:"end"`
}

// Messages pages backwards through a room's timeline from token from.
func (c *Client) Messages(ctx context.Context, roomID, from string, limit int, filter string) (*messagesResponse, int, error) {
	q := url.Values{"dir": {"b"}, "limit": {strconv.Itoa(limit)}}
	if from != "" {
		q.Set("from", from)
	}
	if filter != "" {
		q.Set("filter", filter)
	}
	b, err := c.do(ctx, http.MethodGet, clientPrefix+"/rooms/"+url.PathEscape(roomID)+"/messages", q, nil, reqTimeout)
	if err != nil {
		return nil, len(b), err
	}
	var out messagesResponse
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, len(b), fmt.Errorf("GET /messages: decode response: %w", err)
	}
	return &out, len(b), nil
}
