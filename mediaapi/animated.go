package mediaapi

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/color/palette"
	"image/gif"
	"io"

	"golang.org/x/image/draw"

	"myelin/setup/config"
)

// Animated thumbnails (animated=true, MSC2705, spec v1.11). A GIF or WebP
// of at most animated_max_bytes is served as it is. A larger animated GIF
// gets an animated GIF thumbnail: every frame composed onto the canvas as
// the GIF's disposal methods say, scaled, and dithered to a web-safe
// palette. x/image/webp decodes no animation, so a larger animated WebP
// gets a still thumbnail of its first frame (as any request without
// animated=true does), made from that frame's own bitstream.

// errNotAnimated says a GIF has one frame: a still thumbnail serves.
var errNotAnimated = errors.New("not animated")

// gifFrames reads a GIF's block structure without decoding any pixel and
// returns its frame count and the pixels of all its frames together: a
// small file holding thousands of large frames is refused before
// gif.DecodeAll would decode them all.
func gifFrames(r io.Reader) (frames int, pixels int64, err error) {
	br := bufio.NewReader(r)
	var hdr [13]byte // signature, version, logical screen descriptor
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, 0, fmt.Errorf("gif header: %w", err)
	}
	if string(hdr[:3]) != "GIF" {
		return 0, 0, errors.New("not a GIF")
	}
	if hdr[10]&0x80 != 0 {
		if _, err := br.Discard(3 << ((hdr[10] & 7) + 1)); err != nil {
			return 0, 0, fmt.Errorf("gif colour table: %w", err)
		}
	}
	skipBlocks := func() error {
		for {
			n, err := br.ReadByte()
			if err != nil {
				return err
			}
			if n == 0 {
				return nil
			}
			if _, err := br.Discard(int(n)); err != nil {
				return err
			}
		}
	}
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, 0, fmt.Errorf("gif block: %w", err)
		}
		switch b {
		case 0x21: // extension: label, then sub-blocks
			if _, err := br.ReadByte(); err != nil {
				return 0, 0, err
			}
			if err := skipBlocks(); err != nil {
				return 0, 0, fmt.Errorf("gif extension: %w", err)
			}
		case 0x2c: // image descriptor
			var d [9]byte
			if _, err := io.ReadFull(br, d[:]); err != nil {
				return 0, 0, fmt.Errorf("gif image: %w", err)
			}
			w, h := binary.LittleEndian.Uint16(d[4:]), binary.LittleEndian.Uint16(d[6:])
			if d[8]&0x80 != 0 {
				if _, err := br.Discard(3 << ((d[8] & 7) + 1)); err != nil {
					return 0, 0, err
				}
			}
			if _, err := br.ReadByte(); err != nil { // LZW minimum code size
				return 0, 0, err
			}
			if err := skipBlocks(); err != nil {
				return 0, 0, fmt.Errorf("gif image data: %w", err)
			}
			frames++
			pixels += int64(w) * int64(h)
		case 0x3b: // trailer
			return frames, pixels, nil
		default:
			return 0, 0, fmt.Errorf("gif: unknown block %#x", b)
		}
	}
}

// thumbPalette is what animated thumbnails are dithered to: the web-safe
// colours and transparency.
var thumbPalette = append(append(color.Palette{}, palette.WebSafe...), color.Transparent)

// animatedGIFThumbnail makes an animated thumbnail of the GIF in f, whose
// frames may hold maxPixels pixels in all; errNotAnimated for a GIF of one
// frame. The caller checked the canvas size.
func animatedGIFThumbnail(f io.ReadSeeker, size config.ThumbnailSize, maxPixels int64) ([]byte, error) {
	frames, pixels, err := gifFrames(f)
	if err != nil {
		return nil, err
	}
	if frames < 2 {
		return nil, errNotAnimated
	}
	if pixels > maxPixels {
		return nil, fmt.Errorf("%d frames of %d pixels in all: %w", frames, pixels, errTooManyPixels)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("rewind media content: %w", err)
	}
	g, err := gif.DecodeAll(f)
	if err != nil {
		return nil, err
	}
	canvas := image.NewRGBA(image.Rect(0, 0, g.Config.Width, g.Config.Height))
	var saved *image.RGBA
	out := &gif.GIF{LoopCount: g.LoopCount}
	for i, fr := range g.Image {
		disposal := byte(0)
		if i < len(g.Disposal) {
			disposal = g.Disposal[i]
		}
		if disposal == gif.DisposalPrevious {
			saved = image.NewRGBA(canvas.Rect)
			copy(saved.Pix, canvas.Pix)
		}
		draw.Draw(canvas, fr.Bounds(), fr, fr.Bounds().Min, draw.Over)
		scaled := resize(canvas, size)
		p := image.NewPaletted(scaled.Bounds(), thumbPalette)
		draw.FloydSteinberg.Draw(p, p.Bounds(), scaled, scaled.Bounds().Min)
		delay := 0
		if i < len(g.Delay) {
			delay = g.Delay[i]
		}
		out.Image = append(out.Image, p)
		out.Delay = append(out.Delay, delay)
		// Each output frame is whole: clear it before the next.
		out.Disposal = append(out.Disposal, gif.DisposalBackground)
		switch disposal {
		case gif.DisposalBackground:
			draw.Draw(canvas, fr.Bounds(), image.Transparent, image.Point{}, draw.Src)
		case gif.DisposalPrevious:
			copy(canvas.Pix, saved.Pix)
		}
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, out); err != nil {
		return nil, fmt.Errorf("encode animated thumbnail: %w", err)
	}
	return buf.Bytes(), nil
}

var errTooManyPixels = errors.New("too many pixels")

// webpFirstFrame returns, for an animated WebP, a still WebP of its first
// frame (RIFF with that frame's ALPH and VP8, or VP8L, chunks), which
// x/image/webp decodes; ok is false for a WebP that is not animated. The
// frame's data is at most what the file holds.
func webpFirstFrame(r io.Reader) (still []byte, ok bool, err error) {
	var hdr [12]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, false, err
	}
	if string(hdr[:4]) != "RIFF" || string(hdr[8:]) != "WEBP" {
		return nil, false, errors.New("not a WebP")
	}
	animated := false
	for {
		var ch [8]byte
		if _, err := io.ReadFull(r, ch[:]); err != nil {
			return nil, false, nil // no frame found: not ours to say
		}
		fourcc, n := string(ch[:4]), int64(binary.LittleEndian.Uint32(ch[4:]))
		padded := n + n&1
		switch {
		case fourcc == "VP8X":
			var x [10]byte
			if n != 10 {
				return nil, false, errors.New("webp: bad VP8X")
			}
			if _, err := io.ReadFull(r, x[:]); err != nil {
				return nil, false, err
			}
			animated = x[0]&0x02 != 0
			if !animated {
				return nil, false, nil
			}
		case fourcc == "ANMF" && animated:
			if n < 16 {
				return nil, false, errors.New("webp: bad ANMF")
			}
			frame := make([]byte, n)
			if _, err := io.ReadFull(r, frame); err != nil {
				return nil, false, err
			}
			w := 1 + (uint32(frame[6]) | uint32(frame[7])<<8 | uint32(frame[8])<<16)
			h := 1 + (uint32(frame[9]) | uint32(frame[10])<<8 | uint32(frame[11])<<16)
			return stillWebP(frame[16:], w, h), true, nil
		default:
			if _, err := io.CopyN(io.Discard, r, padded); err != nil {
				return nil, false, nil
			}
		}
	}
}

// stillWebP wraps a frame's chunks (ALPH and VP8, or VP8L) in a RIFF of
// its own: with a VP8X saying the frame's size and alpha when the frame
// has an ALPH chunk, as the format requires then.
func stillWebP(chunks []byte, w, h uint32) []byte {
	var body bytes.Buffer
	body.WriteString("WEBP")
	if len(chunks) >= 4 && string(chunks[:4]) == "ALPH" {
		var x [18]byte
		copy(x[:], "VP8X")
		binary.LittleEndian.PutUint32(x[4:], 10)
		x[8] = 0x10 // alpha
		x[12], x[13], x[14] = byte(w-1), byte((w-1)>>8), byte((w-1)>>16)
		x[15], x[16], x[17] = byte(h-1), byte((h-1)>>8), byte((h-1)>>16)
		body.Write(x[:])
	}
	body.Write(chunks)
	out := make([]byte, 8, 8+body.Len())
	copy(out, "RIFF")
	binary.LittleEndian.PutUint32(out[4:], uint32(body.Len()))
	return append(out, body.Bytes()...)
}
