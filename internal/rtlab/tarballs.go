package rtlab

import (
	"context"
	"fmt"
	"os"
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
