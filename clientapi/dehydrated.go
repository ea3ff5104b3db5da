package clientapi

import (
	"encoding/json"
	"net/http"

	"github.com/gorilla/mux"
	"github.com/tidwall/gjson"

	"myelin/internal/mxhttp"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
)

// dehydratedPrefix is MSC3814's unstable prefix; the device's to-device
// messages (POST .../{deviceId}/events) are served by the syncapi.
const dehydratedPrefix = "/_matrix/client/unstable/org.matrix.msc3814.v1"

func (c *ClientAPI) dehydratedRoutes(root *mux.Router) {
	r := root.PathPrefix(dehydratedPrefix).Subrouter()
	r.Handle("/dehydrated_device", c.authed(c.putDehydratedDevice)).Methods(http.MethodPut)
	r.Handle("/dehydrated_device", c.authed(c.getDehydratedDevice)).Methods(http.MethodGet)
	r.Handle("/dehydrated_device", c.authed(c.deleteDehydratedDevice)).Methods(http.MethodDelete)
}

type putDehydratedDeviceRequest struct {
	DeviceID                 string          `json:"device_id"`
	DeviceData               json.RawMessage `json:"device_data"`
	InitialDeviceDisplayName string          `json:"initial_device_display_name"`
	uploadKeysRequest
}

func (q *putDehydratedDeviceRequest) Validate() error {
	if q.DeviceID == "" {
		return mxhttp.MissingParam("device_id is required")
	}
	if err := mxid.Opaque(q.DeviceID, mxid.MaxLen); err != nil {
		return mxhttp.InvalidParam("device_id: %v", err)
	}
	if !gjson.ParseBytes(q.DeviceData).IsObject() {
		return mxhttp.MissingParam("device_data must be an object")
	}
	// Keys come in the same request, so that no dehydrated device is
	// made that others cannot encrypt to.
	if t := mxhttp.TrimJSONSpace(q.DeviceKeys); len(t) == 0 || string(t) == "null" {
		return mxhttp.MissingParam("device_keys is required")
	}
	if err := checkDeviceName("initial_device_display_name", q.InitialDeviceDisplayName); err != nil {
		return err
	}
	return q.uploadKeysRequest.Validate()
}

func (c *ClientAPI) putDehydratedDevice(r *http.Request, dev *uapi.Device) (any, error) {
	var req putDehydratedDeviceRequest
	if err := mxhttp.ReadJSON(r, &req); err != nil {
		return nil, err
	}
	keys, err := checkDeviceKeys(req.DeviceKeys, dev.UserID, req.DeviceID)
	if err != nil {
		return nil, err
	}
	err = c.users.PutDehydratedDevice(r.Context(), uapi.PutDehydratedDeviceRequest{
		DehydratedDevice: uapi.DehydratedDevice{DeviceID: req.DeviceID, DeviceData: req.DeviceData},
		UserID:           dev.UserID,
		DisplayName:      req.InitialDeviceDisplayName,
		Keys:             uapi.UploadKeysRequest{DeviceKeys: keys, OneTimeKeys: req.OneTimeKeys, FallbackKeys: req.FallbackKeys},
	})
	if err != nil {
		return nil, err
	}
	return map[string]string{"device_id": req.DeviceID}, nil
}

func (c *ClientAPI) getDehydratedDevice(r *http.Request, dev *uapi.Device) (any, error) {
	d, err := c.users.DehydratedDevice(r.Context(), dev.UserID)
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("No dehydrated device")
	}
	return d, err
}

func (c *ClientAPI) deleteDehydratedDevice(r *http.Request, dev *uapi.Device) (any, error) {
	id, err := c.users.DeleteDehydratedDevice(r.Context(), dev.UserID)
	if uapi.IsNotFound(err) {
		return nil, mxhttp.NotFound("No dehydrated device")
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{"device_id": id}, nil
}
