package mediaapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"myelin/internal/bus"
	"myelin/internal/mxhttp"
	"myelin/mediaapi/storage"
	rsapi "myelin/roomserver/api"
	uapi "myelin/userapi/api"
)

// Room-wide quarantine (Synapse's admin API) needs the media a room's
// events refer to. The mediaapi records them itself as the roomserver's
// output goes by (a durable consumer of OutputRoomEvent, from the start of
// the stream), rather than asking the roomserver or the syncapi to scan a
// room's history: no component offers that, and the references of one
// event are a few rows written once.

// mediaPaths are where an event's content names media: an attachment's
// url (m.image, m.file, m.video, m.audio, m.sticker, m.room.avatar), its
// thumbnail, and the encrypted forms of both (spec "Sending encrypted
// attachments").
var mediaPaths = []string{"content.url", "content.info.thumbnail_url", "content.file.url", "content.info.thumbnail_file.url"}

// roomEventBatch bounds the events one write covers.
const roomEventBatch = 64

// startRoomMedia consumes OutputRoomEvent until ctx ends.
func (m *MediaAPI) startRoomMedia(ctx context.Context) error {
	cons, err := m.bus.OpenConsumer(ctx, bus.OutputRoomEvent, bus.OutputConsumer("mediaapi", jetstream.DeliverAllPolicy))
	if err != nil {
		return fmt.Errorf("mediaapi: %w", err)
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		cons.ConsumeBatch(ctx, m.log.WithField("stream", bus.OutputRoomEvent), roomEventBatch, 0, m.onRoomEvents)
	}()
	return nil
}

// onRoomEvents records the media the events refer to; recording twice is
// harmless, so a redelivered batch is too.
func (m *MediaAPI) onRoomEvents(ctx context.Context, ms []jetstream.Msg) error {
	var refs []storage.RoomMedia
	for _, msg := range ms {
		var out rsapi.OutputEvent
		if err := json.Unmarshal(msg.Data(), &out); err != nil {
			m.log.WithError(err).Warn("dropping malformed output event")
			continue
		}
		for _, v := range gjson.GetManyBytes(out.Event, mediaPaths...) {
			if server, id, ok := parseMXC(v.String()); ok && v.Type == gjson.String {
				refs = append(refs, storage.RoomMedia{RoomID: out.RoomID, ServerName: server, MediaID: id})
			}
		}
	}
	if len(refs) == 0 {
		return nil
	}
	return m.store.RecordRoomMedia(ctx, refs)
}

// parseMXC reads mxc://<server-name>/<media-id>, both parts checked.
func parseMXC(uri string) (server, id string, ok bool) {
	rest, ok := strings.CutPrefix(uri, "mxc://")
	if !ok {
		return "", "", false
	}
	server, id, ok = strings.Cut(rest, "/")
	if !ok || !validMediaID(id) || !reachableName(server) {
		return "", "", false
	}
	return server, id, true
}

// adminRoomMedia is GET /_synapse/admin/v1/room/{roomId}/media: the mxc
// URIs of the room's media, this server's and others'.
func (m *MediaAPI) adminRoomMedia(r *http.Request, _ *uapi.Device) (any, error) {
	refs, err := m.store.MediaOfRoom(r.Context(), mxhttp.Var(r, "roomId"))
	if err != nil {
		return nil, err
	}
	local, remote := []string{}, []string{}
	for _, ref := range refs {
		uri := "mxc://" + ref.ServerName + "/" + ref.MediaID
		if ref.ServerName == m.serverName {
			local = append(local, uri)
		} else {
			remote = append(remote, uri)
		}
	}
	return map[string]any{"local": local, "remote": remote}, nil
}

// adminQuarantineRoom is POST /_synapse/admin/v1/room/{roomId}/media/quarantine
// (and the older /_synapse/admin/v1/quarantine_media/{roomId}): every item
// the room's events refer to is quarantined, this server's and others'.
func (m *MediaAPI) adminQuarantineRoom(r *http.Request, dev *uapi.Device) (any, error) {
	n, err := m.store.QuarantineRoom(r.Context(), mxhttp.Var(r, "roomId"), m.serverName, dev.UserID, m.now().UnixMilli())
	if err != nil {
		return nil, err
	}
	return map[string]any{"num_quarantined": n}, nil
}
