package mediaapi

import (
	"context"
	"io"

	"myelin/mediaapi/storage"
)

// Remote fetches media from the server that holds it (the federationapi
// implements it, with its signed client).
type Remote interface {
	// Download returns the content of serverName's mediaID, its type and
	// file name; storage.ErrNotFound when the server says it has none.
	Download(ctx context.Context, serverName, mediaID string) (body io.ReadCloser, contentType, fileName string, err error)
}

// SetRemote lets the mediaapi fetch remote media through r (set by setup
// once the federationapi exists).
func (m *MediaAPI) SetRemote(r Remote) { m.remote = r }

// fetchRemote fetches a remote item not cached here, once however many
// ask at the same time, and caches it.
func (m *MediaAPI) fetchRemote(ctx context.Context, server, id string) (*storage.Media, error) {
	if m.remote == nil {
		return nil, storage.ErrNotFound
	}
	err := m.flights.do(ctx, "remote "+mediaKey(server, id), func() error {
		return m.fetchRemoteOnce(ctx, server, id)
	})
	if err != nil {
		return nil, err
	}
	return m.store.Media(ctx, server, id)
}

func (m *MediaAPI) fetchRemoteOnce(ctx context.Context, server, id string) error {
	if _, err := m.store.Media(ctx, server, id); err == nil {
		return nil // another caller's fetch finished first
	}
	body, contentType, fileName, err := m.remote.Download(ctx, server, id)
	if err != nil {
		return err
	}
	defer body.Close()
	rc, err := m.blobs.receive(body, m.cfg.MaxUploadBytes)
	if err != nil {
		return err
	}
	md := &storage.Media{
		ServerName: server, MediaID: id, ContentType: contentType, UploadName: fileName,
		Size: rc.size, Hash: rc.hash, CreatedTS: m.now().UnixMilli(),
	}
	return m.store1(ctx, rc, func() error {
		err := m.store.InsertMedia(ctx, md)
		if err == storage.ErrExists {
			return nil
		}
		return err
	})
}
