package mediaapi

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// errTooLarge is returned by receive for content over its limit.
var errTooLarge = errors.New("content too large")

// blobStore keeps content on disk, one file per SHA-256 under
// base/ab/cd/<hash>, so the same bytes uploaded twice are stored once and
// no name a client chooses (media ID, file name) ever becomes a path.
// Content arrives in base/tmp and is renamed into place once hashed.
type blobStore struct {
	base string
	tmp  string
	// locks serialise placing a hash's file (and recording its row) with
	// removing it once unused, per hash (striped).
	locks [64]sync.Mutex
}

func newBlobStore(base string) (*blobStore, error) {
	if base == "" {
		// Never the working directory: tmp is cleared at start.
		return nil, errors.New("media_api.base_path is empty")
	}
	b := &blobStore{base: base, tmp: filepath.Join(base, "tmp")}
	// What a previous run was receiving when it stopped is garbage.
	if err := os.RemoveAll(b.tmp); err != nil {
		return nil, fmt.Errorf("clear %s: %w", b.tmp, err)
	}
	if err := os.MkdirAll(b.tmp, 0o700); err != nil {
		return nil, fmt.Errorf("media_api.base_path: %w", err)
	}
	return b, nil
}

// lock takes the lock of hash's stripe and returns its release.
func (b *blobStore) lock(hash string) func() {
	l := &b.locks[int(hexVal(hash[0]))<<2|int(hexVal(hash[1]))>>2]
	l.Lock()
	return l.Unlock
}

func hexVal(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return 0
}

// validHash reports whether h is a lower-case hex SHA-256: the only names
// that reach the file system.
func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		if hexVal(h[i]) == 0 && h[i] != '0' {
			return false
		}
	}
	return true
}

// path is where the content of hash is stored.
func (b *blobStore) path(hash string) (string, error) {
	if !validHash(hash) {
		return "", fmt.Errorf("not a content hash: %q", hash)
	}
	return filepath.Join(b.base, hash[:2], hash[2:4], hash), nil
}

// received is content written to a temporary file and hashed.
type received struct {
	tmp  string
	hash string
	size int64
}

// receive streams r into a temporary file while hashing it, and stops
// with errTooLarge as soon as more than max bytes came: the content is
// never whole in memory, nor on disk past the limit.
func (b *blobStore) receive(r io.Reader, max int64) (*received, error) {
	f, err := os.CreateTemp(b.tmp, "up-*")
	if err != nil {
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, max+1))
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err == nil && n > max {
		err = errTooLarge
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return nil, err
	}
	return &received{tmp: f.Name(), hash: hex.EncodeToString(h.Sum(nil)), size: n}, nil
}

// discard removes a received file that will not be placed.
func (b *blobStore) discard(rc *received) { _ = os.Remove(rc.tmp) }

// place moves received content to its hash's file, or drops it when that
// file is there already. The caller holds lock(rc.hash).
func (b *blobStore) place(rc *received) error {
	dst, err := b.path(rc.hash)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dst); err == nil {
		b.discard(rc)
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		b.discard(rc)
		return fmt.Errorf("make content directory: %w", err)
	}
	if err := os.Rename(rc.tmp, dst); err != nil {
		b.discard(rc)
		return fmt.Errorf("store content %s: %w", rc.hash, err)
	}
	return nil
}

// open opens the content of hash for reading.
func (b *blobStore) open(hash string) (*os.File, error) {
	p, err := b.path(hash)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// remove deletes the content of hash. The caller holds lock(hash) and
// has checked that no row names it.
func (b *blobStore) remove(hash string) error {
	p, err := b.path(hash)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove content %s: %w", hash, err)
	}
	return nil
}
