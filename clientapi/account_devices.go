package clientapi

import (
	"net/http"

	"myelin/internal/mxhttp"
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
