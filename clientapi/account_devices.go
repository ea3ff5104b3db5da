package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
)

// deviceJSON is a device as the device endpoints show it.
type deviceJSON struct {
	DeviceID    string `json:"device_id"`
	DisplayName string `json:"display_name,omitempty"`
	LastSeenIP  string `json:"last_seen_ip,omitempty"`
	LastSeenTS  int64  `json:"last_seen_ts,omitempty"`
}

func toDeviceJSON(d *uapi.Device) deviceJSON {
	return deviceJSON{DeviceID: d.DeviceID, DisplayName: d.DisplayName, LastSeenIP: d.LastSeenIP, LastSeenTS: d.LastSeenTS}
}

func (c *ClientAPI) listDevices(r *http.Request, dev *uapi.Device) (any, error) {
	devs, err := c.users.Devices(r.Context(), dev.UserID)
	if err != nil {
		return nil, err
	}
	// A dehydrated device is no session the user signed in: it is left
	// out, as Synapse does.
	hidden := ""
	if d, err := c.users.DehydratedDevice(r.Context(), dev.UserID); err == nil {
		hidden = d.DeviceID
	} else if !uapi.IsNotFound(err) {
		return nil, err
	}
	out := make([]deviceJSON, 0, len(devs))
	for i := range devs {
		if devs[i].DeviceID != hidden {
			out = append(out, toDeviceJSON(&devs[i]))
		}
	}
	return map[string]any{"devices": out}, nil
}

// device returns the caller's device named in the path, or M_NOT_FOUND.
func (c *ClientAPI) device(r *http.Request, dev *uapi.Device) (*uapi.Device, error) {
	d, err := c.users.Device(r.Context(), dev.UserID, mxhttp.Var(r, "deviceId"))
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("Unknown device")
	}
	return d, err
}

func (c *ClientAPI) getDevice(r *http.Request, dev *uapi.Device) (any, error) {
	d, err := c.device(r, dev)
	if err != nil {
		return nil, err
	}
	return toDeviceJSON(d), nil
}

type updateDeviceRequest struct {
	DisplayName *string `json:"display_name"`
}

func (q *updateDeviceRequest) Validate() error {
	if q.DisplayName != nil {
		return checkDeviceName("display_name", *q.DisplayName)
	}
	return nil
}

// updateDevice is PUT /devices/{deviceId}: it renames one of the caller's
// devices (creating devices this way, new in v1.17, is not supported).
func (c *ClientAPI) updateDevice(r *http.Request, dev *uapi.Device) (any, error) {
	var req updateDeviceRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	d, err := c.device(r, dev)
	if err != nil {
		return nil, err
	}
	if req.DisplayName != nil {
		err := c.users.SetDeviceName(r.Context(), dev.UserID, d.DeviceID, *req.DisplayName)
		if uapi.IsNotFound(err) {
			return nil, mxhttp.NotFound("Unknown device")
		}
		if err != nil {
			return nil, err
		}
	}
	return struct{}{}, nil
}

type deleteDevicesRequest struct {
	Devices *[]string `json:"devices"`
}

// deleteDevice is DELETE /devices/{deviceId}, behind a password. A device
// that does not exist (any more) is deleted already: 200, as the spec says.
func (c *ClientAPI) deleteDevice(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	// Older clients send no body at all; that is an empty request.
	if len(mxhttp.TrimJSONSpace(body)) == 0 {
		body = []byte(`{}`)
	}
	deviceID := mxhttp.Var(r, "deviceId")
	var req struct{}
	if challenge, err := c.passwordAuth(r, dev, "delete device "+deviceID, body, &req); challenge != nil || err != nil {
		return challenge, err
	}
	if err := c.users.DeleteDevices(r.Context(), dev.UserID, []string{deviceID}); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// deleteDevices is POST /delete_devices, behind a password. Unknown device
// IDs are ignored.
func (c *ClientAPI) deleteDevices(r *http.Request, dev *uapi.Device) (any, error) {
	body, err := mxhttp.ReadBody(r)
	if err != nil {
		return nil, err
	}
	var req deleteDevicesRequest
	att, err := c.passwordUIA(r, dev, "delete devices", body, &req)
	if err != nil {
		return nil, err
	}
	if req.Devices == nil {
		return nil, mxhttp.MissingParam("devices is required")
	}
	if challenge, err := att.run(); challenge != nil || err != nil {
		return challenge, err
	}
	if len(*req.Devices) == 0 {
		return struct{}{}, nil
	}
	if err := c.users.DeleteDevices(r.Context(), dev.UserID, *req.Devices); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

// whois is GET /admin/whois/{userId}: a user's devices with where and when
// each was last seen. Only the user itself and server admins may ask.
// Myelin keeps one connection per device (the last seen), so each device
// has one session of one connection.
func (c *ClientAPI) whois(r *http.Request, dev *uapi.Device) (any, error) {
	userID := mxhttp.Var(r, "userId")
	if userID != dev.UserID && !dev.IsAdmin {
		return nil, mxhttp.Forbidden("Only server admins may look up other users")
	}
	if srv, _ := mxid.Server(userID); srv != c.cfg.ServerName {
		return nil, mxhttp.InvalidParam("Only users of this server can be looked up")
	}
	devs, err := c.users.Devices(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	type connection struct {
		IP        string `json:"ip"`
		LastSeen  int64  `json:"last_seen"`
		UserAgent string `json:"user_agent"`
	}
	type session struct {
		Connections []connection `json:"connections"`
	}
	type deviceInfo struct {
		Sessions []session `json:"sessions"`
	}
	out := make(map[string]deviceInfo, len(devs))
	for _, d := range devs {
		conns := []connection{}
		if d.LastSeenTS > 0 {
			conns = append(conns, connection{IP: d.LastSeenIP, LastSeen: d.LastSeenTS, UserAgent: d.UserAgent})
		}
		out[d.DeviceID] = deviceInfo{Sessions: []session{{Connections: conns}}}
	}
	return map[string]any{"user_id": userID, "devices": out}, nil
}
