package mediaapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"
	"mime"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/image/draw"
	"golang.org/x/image/webp"

	"myelin/internal/mxhttp"
	"myelin/mediaapi/storage"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// thumbnailTimeout bounds the wait for a worker and the making of one
// thumbnail.
const thumbnailTimeout = time.Minute

// thumbnailWorkers is how many thumbnails are made at once: one a core.
func thumbnailWorkers() int { return max(1, runtime.GOMAXPROCS(0)) }

// decoders are the formats thumbnailed, by content type; each decoder is
// called directly (no image.RegisterFormat, which is global state), and
// the stored type decides which, so bytes of another format fail cleanly.
var decoders = map[string]struct {
	config func(io.Reader) (image.Config, error)
	decode func(io.Reader) (image.Image, error)
}{
	"image/jpeg": {jpeg.DecodeConfig, jpeg.Decode},
	"image/png":  {png.DecodeConfig, png.Decode},
	"image/gif":  {gif.DecodeConfig, gif.Decode}, // the first frame
	"image/webp": {webp.DecodeConfig, webp.Decode},
}

// thumbnail is GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}.
func (m *MediaAPI) thumbnail(r *http.Request, _ *uapi.Device) (any, error) {
	return m.serveThumbnail(r, false)
}

// legacyThumbnail is the unauthenticated GET /_matrix/media/v3/thumbnail.
func (m *MediaAPI) legacyThumbnail(r *http.Request) (any, error) {
	return m.serveThumbnail(r, true)
}

// thumbnailQuery is what a thumbnail request asks for.
type thumbnailQuery struct {
	width, height int
	method        string
	animated      bool
}

func parseThumbnailQuery(r *http.Request) (thumbnailQuery, error) {
	q := r.URL.Query()
	var tq thumbnailQuery
	for _, p := range []struct {
		name string
		dst  *int
	}{{"width", &tq.width}, {"height", &tq.height}} {
		s := q.Get(p.name)
		if s == "" {
			return tq, mxhttp.MissingParam("%s is required", p.name)
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1<<16 {
			return tq, mxhttp.InvalidParam("%s must be a positive integer", p.name)
		}
		*p.dst = n
	}
	tq.method = q.Get("method")
	if tq.method == "" {
		tq.method = "scale"
	}
	if tq.method != "scale" && tq.method != "crop" {
		return tq, mxhttp.InvalidParam("method must be crop or scale")
	}
	switch q.Get("animated") {
	case "", "false":
	case "true":
		tq.animated = true
	default:
		return tq, mxhttp.InvalidParam("animated must be true or false")
	}
	return tq, nil
}

func (m *MediaAPI) serveThumbnail(r *http.Request, legacy bool) (any, error) {
	b, err := m.thumbnailOf(r, mxhttp.Var(r, "serverName"), legacy, r.URL.Query().Get("allow_remote") != "false")
	if err != nil {
		return nil, err
	}
	return m.serveBlob(b), nil
}

// thumbnailOf finds (or makes) the thumbnail a request asks for.
func (m *MediaAPI) thumbnailOf(r *http.Request, server string, legacy, allowRemote bool) (blob, error) {
	tq, err := parseThumbnailQuery(r)
	if err != nil {
		return blob{}, err
	}
	md, err := m.lookup(r, server, legacy, allowRemote)
	if err != nil {
		return blob{}, err
	}
	mt, _, _ := mime.ParseMediaType(md.ContentType)
	if _, ok := decoders[mt]; !ok {
		return blob{}, mxhttp.Unknown("Cannot make a thumbnail of %s content", mt)
	}
	if tq.animated && (mt == "image/gif" || mt == "image/webp") && md.Size <= m.cfg.AnimatedMaxBytes {
		// MSC2705: the original keeps its animation; it is small enough
		// to serve as the thumbnail.
		return blobOf(md, md.UploadName), nil
	}
	size := chooseSize(m.sizes, tq)
	// An animated GIF's animated thumbnail is stored apart from its still
	// one, under the method with " animated" added.
	method := size.Method
	animated := tq.animated && mt == "image/gif"
	if animated {
		method += animatedSuffix
	}
	th, err := m.store.Thumbnail(r.Context(), md.ServerName, md.MediaID, size.Width, size.Height, method)
	if errors.Is(err, storage.ErrNotFound) {
		th, err = m.makeThumbnail(r.Context(), md, mt, size, animated)
	}
	var me *mxhttp.Error
	if errors.As(err, &me) && me.Code == "M_TOO_LARGE" && md.ServerName != m.serverName {
		// The spec's status for remote content too large to thumbnail.
		return blob{}, me.WithStatus(http.StatusBadGateway)
	}
	if err != nil {
		return blob{}, err
	}
	return blob{th.Hash, th.ContentType, "thumbnail" + extension(th.ContentType), th.CreatedTS}, nil
}

// animatedSuffix marks the stored thumbnails made for animated=true.
const animatedSuffix = " animated"

func extension(contentType string) string {
	switch contentType {
	case "image/jpeg":
		return ".jpg"
	case "image/gif":
		return ".gif"
	}
	return ".png"
}

// chooseSize picks the configured thumbnail for a request: of the
// request's method if there is one, the smallest that covers the box
// asked for, else the largest (as Synapse picks among its sizes).
func chooseSize(sizes []config.ThumbnailSize, tq thumbnailQuery) config.ThumbnailSize {
	var same []config.ThumbnailSize
	for _, s := range sizes {
		if s.Method == tq.method {
			same = append(same, s)
		}
	}
	if len(same) == 0 {
		same = sizes
	}
	var best, largest *config.ThumbnailSize
	for i := range same {
		s := &same[i]
		if largest == nil || s.Width*s.Height > largest.Width*largest.Height {
			largest = s
		}
		if s.Width >= tq.width && s.Height >= tq.height && (best == nil || s.Width*s.Height < best.Width*best.Height) {
			best = s
		}
	}
	if best == nil {
		best = largest
	}
	return *best
}

// makeThumbnail makes and stores a thumbnail of md at size, once however
// many ask at the same time, on the bounded pool.
func (m *MediaAPI) makeThumbnail(ctx context.Context, md *storage.Media, mt string, size config.ThumbnailSize, animated bool) (*storage.Thumbnail, error) {
	method := size.Method
	if animated {
		method += animatedSuffix
	}
	key := fmt.Sprintf("thumb %s %dx%d %s", mediaKey(md.ServerName, md.MediaID), size.Width, size.Height, method)
	err := m.flights.do(ctx, key, func() error {
		// The thumbnail serves every waiter: it outlives the first one's
		// request, within its own bound.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), thumbnailTimeout)
		defer cancel()
		select {
		case m.thumbSlots <- struct{}{}:
		case <-tctx.Done():
			return mxhttp.ServiceUnavailable(fmt.Errorf("no thumbnail worker free: %w", tctx.Err()))
		}
		defer func() { <-m.thumbSlots }()
		return m.makeThumbnailOnce(tctx, md, mt, size, method)
	})
	if err != nil {
		return nil, err
	}
	return m.store.Thumbnail(ctx, md.ServerName, md.MediaID, size.Width, size.Height, method)
}

// makeThumbnailOnce makes the thumbnail of md at size and stores it under
// method: an animated one when method asks and the GIF is animated (and
// not too large), else a still one.
func (m *MediaAPI) makeThumbnailOnce(ctx context.Context, md *storage.Media, mt string, size config.ThumbnailSize, method string) error {
	if _, err := m.store.Thumbnail(ctx, md.ServerName, md.MediaID, size.Width, size.Height, method); err == nil {
		return nil
	}
	f, err := m.blobs.open(md.Hash)
	if err != nil {
		return fmt.Errorf("open media content: %w", err)
	}
	defer f.Close()
	img, err := decodeBounded(f, mt, m.cfg.MaxThumbnailSourcePixels)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	contentType := "image/png"
	var out image.Image
	if method != size.Method {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("rewind media content: %w", err)
		}
		anim, err := animatedGIFThumbnail(f, size, m.cfg.MaxThumbnailSourcePixels)
		switch {
		case err == nil:
			contentType = "image/gif"
			buf.Write(anim)
		case errors.Is(err, errNotAnimated), errors.Is(err, errTooManyPixels):
			// A still thumbnail serves; it is kept under this method too,
			// so the GIF is not read again.
		default:
			return mxhttp.Unknown("Cannot decode the image: %v", err)
		}
	}
	if buf.Len() == 0 {
		out = resize(img, size)
		if mt == "image/jpeg" {
			contentType = "image/jpeg"
			err = jpeg.Encode(&buf, out, &jpeg.Options{Quality: 80})
		} else {
			err = (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&buf, out)
		}
		if err != nil {
			return fmt.Errorf("encode thumbnail: %w", err)
		}
	}
	rc, err := m.blobs.receive(&buf, int64(buf.Len()))
	if err != nil {
		return err
	}
	th := &storage.Thumbnail{
		ServerName: md.ServerName, MediaID: md.MediaID, Width: size.Width, Height: size.Height, Method: method,
		ContentType: contentType, Size: rc.size, Hash: rc.hash, CreatedTS: m.now().UnixMilli(),
	}
	m.log.WithField("media_id", md.MediaID).WithField("size", fmt.Sprintf("%dx%d %s", size.Width, size.Height, method)).Debug("thumbnail made")
	return m.store1(ctx, rc, func() error { return m.store.InsertThumbnail(ctx, th) })
}

// decodeBounded decodes an image of type mt after checking, from its
// header alone, that it has at most maxPixels pixels: a small file
// claiming a huge image (a decompression bomb) is refused before any
// pixel buffer is allocated.
func decodeBounded(f *os.File, mt string, maxPixels int64) (image.Image, error) {
	d := decoders[mt]
	cfg, err := d.config(f)
	if err != nil {
		return nil, mxhttp.Unknown("Cannot read the image: %v", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, mxhttp.Unknown("The image has no pixels")
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxPixels {
		return nil, mxhttp.New("M_TOO_LARGE", "The image is too large to thumbnail (%dx%d)", cfg.Width, cfg.Height)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind media content: %w", err)
	}
	var src io.Reader = f
	if mt == "image/webp" {
		// x/image/webp decodes no animation: an animated WebP is
		// thumbnailed from its first frame.
		if still, ok, err := webpFirstFrame(f); err == nil && ok {
			src = bytes.NewReader(still)
		} else if _, err := f.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("rewind media content: %w", err)
		}
	}
	img, err := d.decode(src)
	if err != nil {
		// Truncated or corrupt: the client's content, not our fault.
		return nil, mxhttp.Unknown("Cannot decode the image: %v", err)
	}
	return img, nil
}

// resize fits img to size: scale keeps the aspect ratio inside the box,
// crop fills the box and cuts the overflow, centred. Neither enlarges.
func resize(img image.Image, size config.ThumbnailSize) image.Image {
	sb := img.Bounds()
	sw, sh := sb.Dx(), sb.Dy()
	fw, fh := float64(size.Width)/float64(sw), float64(size.Height)/float64(sh)
	if size.Method == "scale" {
		f := min(fw, fh, 1)
		w, h := max(1, int(float64(sw)*f+0.5)), max(1, int(float64(sh)*f+0.5))
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		draw.BiLinear.Scale(dst, dst.Bounds(), img, sb, draw.Src, nil)
		return dst
	}
	f := min(max(fw, fh), 1)
	// The part of the source that, scaled by f, fills the box.
	cw, ch := min(sw, int(float64(size.Width)/f+0.5)), min(sh, int(float64(size.Height)/f+0.5))
	src := image.Rect(sb.Min.X+(sw-cw)/2, sb.Min.Y+(sh-ch)/2, 0, 0)
	src.Max = src.Min.Add(image.Pt(cw, ch))
	w, h := max(1, int(float64(cw)*f+0.5)), max(1, int(float64(ch)*f+0.5))
	dst := image.NewRGBA(image.Rect(0, 0, w, h))
	draw.BiLinear.Scale(dst, dst.Bounds(), img, src, draw.Src, nil)
	return dst
}
