// gotar writes tar archives the way the Go tools that make image layers do (docker's
// pkg/archive, buildkit, containerd, umoci, kaniko all use archive/tar), to stdout.
//
//	gotar moby ROOT MEMBER...     as moby's pkg/archive: FileInfoHeader, Format PAX (Go falls
//	                              back to USTAR where it can), mtime cut to the second, no
//	                              atime/ctime, xattrs as SCHILY.xattr.* PAXRecords, hardlinks
//	                              by inode
//	gotar default ROOT MEMBER...  tar.FileInfoHeader as it is, Format left to Go (USTAR, PAX or
//	                              GNU: whichever holds the header)
//	gotar gnu ROOT MEMBER...      Format GNU: long names as 'L'/'K' headers, atime and ctime in
//	                              the header, base-256 numbers
//	gotar pax ROOT MEMBER...      Format PAX with atime, ctime and sub-second times kept
//	gotar ustar ROOT MEMBER...    Format USTAR
//	gotar crafted                 headers no tree on disk gives (big owners, far times)
//	gotar crafted-types           the type flags Go writes as asked ('S', 'D', '7', 'g'), and
//	gotar crafted-type-A          'A'
//	gotar crafted-sparse          a GNU 'S' header as Go writes it (no sparse map)
//	gotar gzip                    stdin gzipped by compress/gzip (docker's layer compression)
//
// An entry the chosen format cannot hold (WriteHeader refuses it) is left out and named on
// stderr as "skipped NAME: ERROR", and the hardlinks to it (what is under a directory left
// out is written if it fits: its directory is then implied).
package main

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func xattrs(path string) map[string]string {
	out := map[string]string{}
	buf := make([]byte, 65536)
	n, err := syscall.Listxattr(path, buf)
	if err != nil {
		return out
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 65536)
		m, err := syscall.Getxattr(path, name, v)
		if err == nil {
			out[name] = string(v[:m])
		}
	}
	return out
}

type writer struct {
	tw      *tar.Writer
	mode    string
	seen    map[uint64]string // inode -> first name (moby's SeenFiles)
	skipped map[string]bool
}

func (w *writer) add(root, name string) {
	path := filepath.Join(root, name)
	fi, err := os.Lstat(path)
	must(err)
	if fi.Mode()&os.ModeSocket != 0 {
		return // moby skips sockets (FileInfoHeader refuses them)
	}
	link := ""
	if fi.Mode()&os.ModeSymlink != 0 {
		link, err = os.Readlink(path)
		must(err)
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	must(err)
	hdr.Name = name
	if fi.IsDir() {
		hdr.Name += "/"
	}
	st := fi.Sys().(*syscall.Stat_t)
	switch w.mode {
	case "moby":
		hdr.Format = tar.FormatPAX
		hdr.ModTime = hdr.ModTime.Truncate(time.Second)
		hdr.AccessTime = time.Time{}
		hdr.ChangeTime = time.Time{}
		// fillGo18FileTypeBits: docker puts back the file type bits Go 1.9 took out of the mode
		// field (0100644 for a file), so that its layers keep the digests they had
		hdr.Mode |= map[uint32]int64{syscall.S_IFREG: 0o100000, syscall.S_IFDIR: 0o40000,
			syscall.S_IFLNK: 0o120000, syscall.S_IFCHR: 0o20000, syscall.S_IFBLK: 0o60000,
			syscall.S_IFIFO: 0o10000}[st.Mode&syscall.S_IFMT]
	case "gnu":
		hdr.Format = tar.FormatGNU
		// GNU's header holds whole seconds only: Go refuses a fraction rather than cut it
		hdr.ModTime = hdr.ModTime.Truncate(time.Second)
		hdr.AccessTime = hdr.AccessTime.Truncate(time.Second)
		hdr.ChangeTime = hdr.ChangeTime.Truncate(time.Second)
	case "pax":
		hdr.Format = tar.FormatPAX
	case "ustar":
		hdr.Format = tar.FormatUSTAR
		hdr.ModTime = hdr.ModTime.Truncate(time.Second)
		hdr.AccessTime = time.Time{}
		hdr.ChangeTime = time.Time{}
	}
	// only PAX holds xattrs (GNU and USTAR have no record for them)
	// (syscall's Listxattr follows a symlink: a link's own xattrs, which no user.* can be, are
	// not read)
	if (w.mode == "moby" || w.mode == "pax" || w.mode == "default") && link == "" {
		for k, v := range xattrs(path) {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	if !fi.IsDir() && st.Nlink > 1 {
		if first, ok := w.seen[st.Ino]; ok {
			if w.skipped[first] {
				w.skipped[name] = true
				fmt.Fprintf(os.Stderr, "skipped %q: its hardlink target was skipped\n", name)
				return
			}
			hdr.Typeflag = tar.TypeLink
			hdr.Linkname = first
			hdr.Size = 0
		} else {
			w.seen[st.Ino] = name
		}
	}
	if err := w.tw.WriteHeader(hdr); err != nil {
		w.skipped[name] = true
		fmt.Fprintf(os.Stderr, "skipped %q: %v\n", name, err)
		return
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		f, err := os.Open(path)
		must(err)
		_, err = io.Copy(w.tw, f)
		must(err)
		f.Close()
	}
}

func (w *writer) walk(root, member string) {
	w.add(root, member)
	fi, err := os.Lstat(filepath.Join(root, member))
	must(err)
	if !fi.IsDir() {
		return
	}
	f, err := os.Open(filepath.Join(root, member))
	must(err)
	names, err := f.Readdirnames(-1)
	must(err)
	f.Close()
	sort.Strings(names)
	for _, n := range names {
		w.walk(root, member+"/"+n)
	}
}

func crafted(tw *tar.Writer) {
	file := func(h *tar.Header, data string) {
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		h.Size = int64(len(data))
		must(tw.WriteHeader(h))
		_, err := io.WriteString(tw, data)
		must(err)
	}
	t := func(sec int64) time.Time { return time.Unix(sec, 0) }
	long := strings.Repeat("g", 120) + "/" + strings.Repeat("n", 110)
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "c/", Mode: 0o755, ModTime: t(1e9), Format: tar.FormatGNU}))
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "c/" + strings.Repeat("g", 120) + "/", Mode: 0o755,
		ModTime: t(1e9), Format: tar.FormatGNU}))
	// GNU: a long name ('L'), a long link target ('K'), atime/ctime in the header, base-256
	// owners and times before 1970 and after 2242
	file(&tar.Header{Name: "c/" + long, ModTime: t(1e9), AccessTime: t(1e9 + 1), ChangeTime: t(1e9 + 2),
		Format: tar.FormatGNU}, "gnu long name\n")
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "c/gnu-long-symlink", Linkname: long,
		ModTime: t(1e9), Format: tar.FormatGNU}))
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeLink, Name: "c/gnu-long-hardlink", Linkname: "c/" + long,
		ModTime: t(1e9), Format: tar.FormatGNU}))
	file(&tar.Header{Name: "c/gnu-big-owner", Uid: 3000000, Gid: 4000000, ModTime: t(1e9), Format: tar.FormatGNU}, "x")
	file(&tar.Header{Name: "c/gnu-before-1970", ModTime: t(-1e9), AccessTime: t(-1e9), ChangeTime: t(-1e9),
		Format: tar.FormatGNU}, "x")
	file(&tar.Header{Name: "c/gnu-after-2242", ModTime: t(1e11), Format: tar.FormatGNU}, "x")
	file(&tar.Header{Name: "c/gnu-long-uname", Uid: 1000, Gid: 1000, Uname: strings.Repeat("u", 31),
		Gname: strings.Repeat("g", 31), ModTime: t(1e9), Format: tar.FormatGNU}, "x")
	// PAX: atime and ctime records, a nanosecond mtime, the same owners and times as records
	file(&tar.Header{Name: "c/pax-times", ModTime: time.Unix(1e9, 123456789), AccessTime: time.Unix(1e9+1, 5),
		ChangeTime: time.Unix(1e9+2, 999999999), Format: tar.FormatPAX}, "x")
	file(&tar.Header{Name: "c/pax-big-owner", Uid: 3000000, Gid: 4000000, ModTime: t(1e9), Format: tar.FormatPAX}, "x")
	// a whole second: before 1970 with a fraction bsdtar loses the fraction's sign (CONFORMANCE.md;
	// test_tar_corpora's pax-mtime-negative-fraction)
	file(&tar.Header{Name: "c/pax-before-1970", ModTime: t(-1e9), Format: tar.FormatPAX}, "x")
	file(&tar.Header{Name: "c/pax-after-2242", ModTime: t(1e11), Format: tar.FormatPAX}, "x")
	file(&tar.Header{Name: "c/pax-long-uname", Uid: 1000, Gid: 1000, Uname: strings.Repeat("u", 40),
		Gname: strings.Repeat("g", 40), ModTime: t(1e9), Format: tar.FormatPAX}, "x")
	file(&tar.Header{Name: "c/pax-" + strings.Repeat("p", 200), ModTime: t(1e9), Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.k": "v", "GOLANG.pkg": "archive/tar"}}, "x")
	// USTAR: a name split at a '/' into prefix and name
	file(&tar.Header{Name: "c/" + strings.Repeat("s", 130) + "/" + strings.Repeat("t", 90), ModTime: t(1e9),
		Format: tar.FormatUSTAR}, "ustar prefix\n")
	// unset formats: Go picks per header (GNU for a time only base-256 holds and a name only
	// 'L' holds... PAX where a record is needed)
	file(&tar.Header{Name: "c/any-big-owner-and-time", Uid: 3000000, ModTime: t(-1e9)}, "x")
	file(&tar.Header{Name: "c/any-caf\u00e9-" + strings.Repeat("a", 100), ModTime: t(1e9)}, "x")
	// a zero ModTime (time.Time{}, year 1: what a Go program that sets none writes), in each format
	for _, f := range []tar.Format{tar.FormatUnknown, tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU} {
		file(&tar.Header{Name: "c/zero-time-" + strings.Trim(strings.ToLower(f.String()), "<>"), Format: f}, "x")
	}
	// owner names that are no ASCII (a PAX uname), and over 32 bytes
	file(&tar.Header{Name: "c/pax-uname-utf8", Uid: 1000, Uname: "j\u00fcrgen", Gname: "\u00e9quipe", ModTime: t(1e9)}, "x")
	// header-only types Go writes with a size of 0 (it refuses a size on them)
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeFifo, Name: "c/fifo", Mode: 0o600, ModTime: t(1e9)}))
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeChar, Name: "c/chr", Mode: 0o600, Devmajor: 1, Devminor: 3,
		ModTime: t(1e9)}))
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeBlock, Name: "c/blk", Mode: 0o600, Devmajor: 7,
		Devminor: 1048575, ModTime: t(1e9)}))
}

// types Go writes as asked, though it writes no sparse map, dump dir or contiguous file of
// its own: 'S' with ustar's magic, GNU's 'D' and ustar's '7' with data, a global header
func craftedTypes(tw *tar.Writer) {
	entry := func(h *tar.Header, data string) {
		h.Mode, h.ModTime, h.Size = 0o644, time.Unix(1e9, 0), int64(len(data))
		must(tw.WriteHeader(h))
		_, err := io.WriteString(tw, data)
		must(err)
	}
	must(tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "global",
		PAXRecords: map[string]string{"comment": "written by gotar"}}))
	entry(&tar.Header{Typeflag: tar.TypeGNUSparse, Name: "sparse-ustar", Format: tar.FormatUSTAR}, "hello")
	entry(&tar.Header{Typeflag: 'D', Name: "dumpdir", Format: tar.FormatGNU}, "Yf\x00\x00")
	entry(&tar.Header{Typeflag: tar.TypeCont, Name: "contiguous"}, "contiguous\n")
	entry(&tar.Header{Typeflag: tar.TypeReg, Name: "after"}, "after\n")
}

func main() {
	if os.Args[1] == "gzip" {
		zw, err := gzip.NewWriterLevel(os.Stdout, gzip.DefaultCompression)
		must(err)
		_, err = io.Copy(zw, os.Stdin)
		must(err)
		must(zw.Close())
		return
	}
	tw := tar.NewWriter(os.Stdout)
	if os.Args[1] == "crafted" {
		crafted(tw)
	} else if os.Args[1] == "crafted-types" {
		craftedTypes(tw)
	} else if os.Args[1] == "crafted-type-A" {
		// a type Go passes on as it is: 'A', which Solaris tar writes for an ACL
		for _, h := range []*tar.Header{{Typeflag: 'A', Name: "type-A", Size: 8}, {Typeflag: tar.TypeReg, Name: "f", Size: 8}} {
			h.Mode, h.ModTime = 0o644, time.Unix(1e9, 0)
			must(tw.WriteHeader(h))
			_, err := io.WriteString(tw, "content\n")
			must(err)
		}
	} else if os.Args[1] == "crafted-sparse" {
		// 'S' with GNU's magic as Go writes it: no sparse map, a real size of 0, the data after
		h := &tar.Header{Typeflag: tar.TypeGNUSparse, Name: "sparse-gnu", Format: tar.FormatGNU, Mode: 0o644,
			ModTime: time.Unix(1e9, 0), Size: 5}
		must(tw.WriteHeader(h))
		_, err := io.WriteString(tw, "hello")
		must(err)
	} else {
		w := &writer{tw: tw, mode: os.Args[1], seen: map[uint64]string{}, skipped: map[string]bool{}}
		for _, m := range os.Args[3:] {
			w.walk(os.Args[2], m)
		}
	}
	must(tw.Close())
}
