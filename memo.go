package logical

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pkg/errors"
)

// A Memo stores the consistent point of each loop, under the loop's name,
// as the stamp's JSON.
//
// The loop calls Get when an iteration starts and Put from
// State.SetConsistentPoint, which waits for Put; Put must therefore be
// durable when it returns. Calls for different keys may overlap; calls for
// one key do not. An error from Get ends the loop iteration (it is retried);
// an error from Put is returned by SetConsistentPoint and leaves the point
// unchanged.
type Memo interface {
	// Get returns the value stored under key, or (nil, nil) if there is
	// none.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put stores value under key, replacing what was there.
	Put(ctx context.Context, key string, value []byte) error
}

// MemoryMemo is a Memo in memory, for tests and for sources that can
// always start afresh. The zero value is ready to use.
type MemoryMemo struct {
	mu   sync.Mutex
	data map[string][]byte
}

var _ Memo = (*MemoryMemo)(nil)

// NewMemoryMemo returns an empty MemoryMemo.
func NewMemoryMemo() *MemoryMemo { return &MemoryMemo{} }

// Get implements Memo. The returned slice is a copy.
func (m *MemoryMemo) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.data[key]
	if !ok {
		return nil, nil
	}
	return bytes.Clone(v), nil
}

// Put implements Memo. It keeps a copy of value. Like a database, it
// refuses a write whose context is already done, so a loop that lost its
// lease cannot store a point late.
func (m *MemoryMemo) Put(ctx context.Context, key string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return errors.WithStack(err)
	}
	if m.data == nil {
		m.data = make(map[string][]byte)
	}
	m.data[key] = bytes.Clone(value)
	return nil
}

// FileMemo is a Memo that keeps one file per key in a directory. A Put is
// crash-safe: the value goes to a temporary file that is synced and then
// renamed over the old one, and the directory is synced, so after a crash a
// key holds either its old or its new value, never a mix. Temporary files
// left by a crash are ignored.
type FileMemo struct {
	dir string
}

var _ Memo = (*FileMemo)(nil)

// NewFileMemo returns a FileMemo that stores its files in dir, creating the
// directory if needed.
func NewFileMemo(dir string) (*FileMemo, error) {
	if dir == "" {
		return nil, errors.New("logical: NewFileMemo: directory is empty")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, errors.Wrapf(err, "logical: NewFileMemo: creating %s", dir)
	}
	return &FileMemo{dir: dir}, nil
}

// Dir returns the directory the memo keeps its files in.
func (m *FileMemo) Dir() string { return m.dir }

// Path returns the file that holds key.
func (m *FileMemo) Path(key string) string { return m.path(key) }

// path maps key to a file name. Keys are loop names, which may hold any
// character; names made of safe characters stay readable, others are
// hashed.
func (m *FileMemo) path(key string) string {
	safe := key != "" && len(key) <= 100 && strings.IndexFunc(key, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) < 0 && key[0] != '.'
	if safe {
		return filepath.Join(m.dir, key+".memo")
	}
	sum := sha256.Sum256([]byte(key))
	return filepath.Join(m.dir, "key-"+hex.EncodeToString(sum[:16])+".memo")
}

// Get implements Memo.
func (m *FileMemo) Get(_ context.Context, key string) ([]byte, error) {
	buf, err := os.ReadFile(m.path(key))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errors.Wrapf(err, "logical: FileMemo: reading key %q", key)
	}
	return buf, nil
}

// Put implements Memo. Like MemoryMemo, it refuses a write whose context
// is done: it checks ctx before it writes and again before the rename that
// makes the value visible, so a loop that lost its lease cannot store a
// point late (a Put whose rename has begun completes).
func (m *FileMemo) Put(ctx context.Context, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return errors.Wrapf(err, "logical: FileMemo: writing key %q", key)
	}
	final := m.path(key)
	tmp, err := os.CreateTemp(m.dir, ".tmp-*")
	if err != nil {
		return errors.Wrapf(err, "logical: FileMemo: writing key %q", key)
	}
	fail := func(err error) error {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return errors.Wrapf(err, "logical: FileMemo: writing key %q", key)
	}
	if _, err := tmp.Write(value); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := ctx.Err(); err != nil {
		_ = os.Remove(tmp.Name())
		return errors.Wrapf(err, "logical: FileMemo: writing key %q", key)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		_ = os.Remove(tmp.Name())
		return errors.Wrapf(err, "logical: FileMemo: writing key %q", key)
	}
	dir, err := os.Open(m.dir)
	if err != nil {
		return errors.Wrapf(err, "logical: FileMemo: syncing %s", m.dir)
	}
	defer dir.Close()
	return errors.Wrapf(dir.Sync(), "logical: FileMemo: syncing %s", m.dir)
}
