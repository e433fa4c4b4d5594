package rtlab

import (
	"archive/tar"
	"context"
	"fmt"
	"maps"
	"os"
	"slices"
)

// Images are the OCI image tarballs of PauseImage and WorkloadImage.
type Images struct {
	Pause, Workload string
}

// BuildImages returns the OCI tarballs a lab imports, for runtimes other
// than the lab's containerd: `podman load -i` takes them as they are. files
// are added to the workload image as with Config.ImageFiles. The tarballs
// are cached under tools/images ("" means $PATU_TOOLS, else DefaultTools)
// and shared with the labs; callers must not modify them.
func BuildImages(ctx context.Context, tools string, files map[string]string) (Images, error) {
	for dst := range files {
		if _, err := imagePath(dst); err != nil {
			return Images{}, fmt.Errorf("rtlab images: %w", err)
		}
	}
	if tools == "" {
		tools = os.Getenv("PATU_TOOLS")
	}
	if tools == "" {
		tools = DefaultTools
	}
	imgs, err := buildImages(ctx, tools, files)
	if err != nil {
		return Images{}, fmt.Errorf("rtlab images: %w", err)
	}
	return Images{Pause: imgs.pause, Workload: imgs.workload}, nil
}

// WriteImage writes an OCI image tarball (the format `ctr images import`
// reads) named ref, of one layer holding files (path in the image to host
// file, mode bits kept, static executables only) and an empty /tmp, with
// the given entrypoint. The same inputs give the same bytes.
func WriteImage(dst, ref string, files map[string]string, entrypoint []string) error {
	s := imageSpec{ref: ref, entrypoint: entrypoint, files: []fileEntry{{name: "tmp", mode: 0o1777, typ: tar.TypeDir}}}
	for _, dstPath := range slices.Sorted(maps.Keys(files)) {
		name, err := imagePath(dstPath)
		if err != nil {
			return err
		}
		src := files[dstPath]
		st, err := os.Stat(src)
		if err != nil {
			return fmt.Errorf("image file %s: %w", dstPath, err)
		}
		if st.Mode()&0o111 != 0 {
			if err := checkStatic(src); err != nil {
				return err
			}
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		s.files = append(s.files, fileEntry{name: name, mode: int64(st.Mode().Perm()), typ: tar.TypeReg, data: data})
	}
	b, err := buildOCI(s)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	return writeFileAtomic(dst, b, 0o644)
}
