// Package mxhttp is the HTTP edge shared by every Matrix-facing component:
// Matrix errors and their statuses (one table), handlers that return errors,
// JSON bodies with size limits, access-token authentication, CORS and rate
// limiting.
package mxhttp

import (
	"errors"
	"fmt"
	"net/http"
)

// statusByCode is the one table of Matrix error codes and the HTTP status
// each is answered with.
var statusByCode = map[string]int{
	"M_FORBIDDEN":                       403,
	"M_UNKNOWN_TOKEN":                   401,
	"M_MISSING_TOKEN":                   401,
	"M_UNAUTHORIZED":                    401,
	"M_USER_DEACTIVATED":                403,
	"M_BAD_JSON":                        400,
	"M_NOT_JSON":                        400,
	"M_NOT_FOUND":                       404,
	"M_LIMIT_EXCEEDED":                  429,
	"M_UNRECOGNIZED":                    404,
	"M_UNKNOWN":                         400,
	"M_USER_IN_USE":                     400,
	"M_INVALID_USERNAME":                400,
	"M_EXCLUSIVE":                       400,
	"M_ROOM_IN_USE":                     400,
	"M_INVALID_ROOM_STATE":              400,
	"M_UNSUPPORTED_ROOM_VERSION":        400,
	"M_INCOMPATIBLE_ROOM_VERSION":       400,
	"M_BAD_STATE":                       400,
	"M_GUEST_ACCESS_FORBIDDEN":          403,
	"M_CAPTCHA_NEEDED":                  401,
	"M_CAPTCHA_INVALID":                 401,
	"M_MISSING_PARAM":                   400,
	"M_INVALID_PARAM":                   400,
	"M_TOO_LARGE":                       413,
	"M_CANNOT_LEAVE_SERVER_NOTICE_ROOM": 403,
	"M_WEAK_PASSWORD":                   400,
	"M_SERVER_NOT_TRUSTED":              403,
	"M_THREEPID_IN_USE":                 400,
	"M_THREEPID_NOT_FOUND":              400,
	"M_THREEPID_AUTH_FAILED":            401,
	"M_THREEPID_DENIED":                 403,
	"M_RESOURCE_LIMIT_EXCEEDED":         403,
	"M_UNABLE_TO_AUTHORISE_JOIN":        400,
	"M_UNABLE_TO_GRANT_JOIN":            502,
	"M_NOT_YET_UPLOADED":                504,
	"M_CANNOT_OVERWRITE_MEDIA":          409,
	"M_WRONG_ROOM_KEYS_VERSION":         403,
}

// StatusFor returns the HTTP status for a Matrix error code (400 if unknown).
func StatusFor(code string) int {
	if s, ok := statusByCode[code]; ok {
		return s
	}
	return http.StatusBadRequest
}

// Coded is implemented by errors of any component that know which Matrix
// error code they are, so that components never import HTTP.
type Coded interface {
	error
	MatrixErrCode() string
}

// Extended is implemented by coded errors that carry the extra response
// fields the spec defines for their code (room_version with
// M_INCOMPATIBLE_ROOM_VERSION).
type Extended interface {
	MatrixErrExtra() map[string]any
}

// Error is a Matrix error response: status, errcode, message and any extra
// fields the spec defines for that code. Cause is logged, never sent.
type Error struct {
	Status  int
	Code    string
	Message string
	Extra   map[string]any
	Cause   error
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Cause)
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Cause }

// MatrixErrCode implements Coded.
func (e *Error) MatrixErrCode() string { return e.Code }

// With returns a copy of e carrying an extra response field.
func (e *Error) With(key string, v any) *Error {
	c := *e
	c.Extra = map[string]any{}
	for k, val := range e.Extra {
		c.Extra[k] = val
	}
	c.Extra[key] = v
	return &c
}

// WithStatus returns a copy of e answered with another HTTP status (for
// codes whose status depends on the endpoint).
func (e *Error) WithStatus(status int) *Error {
	c := *e
	c.Status = status
	return &c
}

// New makes an error for code with the table's status.
func New(code, format string, args ...any) *Error {
	return &Error{Status: StatusFor(code), Code: code, Message: fmt.Sprintf(format, args...)}
}

// Constructors for the common rows of the table.
func Forbidden(format string, args ...any) *Error { return New("M_FORBIDDEN", format, args...) }
func NotFound(format string, args ...any) *Error  { return New("M_NOT_FOUND", format, args...) }
func BadJSON(format string, args ...any) *Error   { return New("M_BAD_JSON", format, args...) }
func NotJSON(format string, args ...any) *Error   { return New("M_NOT_JSON", format, args...) }
func InvalidParam(format string, args ...any) *Error {
	return New("M_INVALID_PARAM", format, args...)
}
func MissingParam(format string, args ...any) *Error {
	return New("M_MISSING_PARAM", format, args...)
}
func MissingToken() *Error { return New("M_MISSING_TOKEN", "Missing access token") }
func UnknownToken(softLogout bool) *Error {
	return New("M_UNKNOWN_TOKEN", "Unknown or expired access token").With("soft_logout", softLogout)
}
func UserInUse() *Error { return New("M_USER_IN_USE", "User ID already taken") }
func InvalidUsername(format string, args ...any) *Error {
	return New("M_INVALID_USERNAME", format, args...)
}
func TooLarge() *Error { return New("M_TOO_LARGE", "Request body too large") }
func Unrecognized(status int) *Error {
	return New("M_UNRECOGNIZED", "Unrecognized request").WithStatus(status)
}
func LimitExceeded(retryAfterMS int64) *Error {
	return New("M_LIMIT_EXCEEDED", "Too many requests").With("retry_after_ms", retryAfterMS)
}
func Unknown(format string, args ...any) *Error { return New("M_UNKNOWN", format, args...) }
func Internal(cause error) *Error {
	return &Error{Status: http.StatusInternalServerError, Code: "M_UNKNOWN", Message: "Internal server error", Cause: cause}
}

// Unavailable is implemented by errors of any component that mean the
// server's own infrastructure (its database, its bus) is down or full for
// now: the request was fine and may succeed when retried.
type Unavailable interface {
	error
	Unavailable() bool
}

// ServiceUnavailable answers a request the server cannot serve for now
// with 503, which clients retry; the cause is logged, never sent.
func ServiceUnavailable(cause error) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "M_UNKNOWN", Message: "The server cannot handle this request right now; try again later", Cause: cause}
}

// ToError turns any error into the Matrix error to answer with: an *Error as
// is, a Coded error with its code and message, an Unavailable one as a
// 503, anything else as a 500 that hides the internal text.
func ToError(err error) *Error {
	var me *Error
	if errors.As(err, &me) {
		return me
	}
	var coded Coded
	if errors.As(err, &coded) {
		e := &Error{Status: StatusFor(coded.MatrixErrCode()), Code: coded.MatrixErrCode(), Message: coded.Error(), Cause: err}
		var ext Extended
		if errors.As(err, &ext) {
			e.Extra = ext.MatrixErrExtra()
		}
		return e
	}
	var un Unavailable
	if errors.As(err, &un) && un.Unavailable() {
		return ServiceUnavailable(err)
	}
	if errors.Is(err, errBodyTooLarge) {
		return TooLarge()
	}
	return Internal(err)
}

// Body returns the JSON body of the error response.
func (e *Error) Body() map[string]any {
	b := make(map[string]any, 2+len(e.Extra))
	for k, v := range e.Extra {
		b[k] = v
	}
	b["errcode"] = e.Code
	b["error"] = e.Message
	return b
}
