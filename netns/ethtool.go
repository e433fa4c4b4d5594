package netns

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EnableGRO turns GRO on for interface ifname inside the network namespace
// at nsPath. On the pod end of a veth pair this puts its receive side in
// NAPI mode, without which the kernel drops frames an XDP program
// redirects into the pair's host end.
func EnableGRO(nsPath, ifname string) error { return SetGRO(nsPath, ifname, true) }

// SetGRO turns GRO on or off for ifname inside the namespace at nsPath.
func SetGRO(nsPath, ifname string, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if err := setFeature(nsPath, ifname, unix.ETHTOOL_SGRO, v); err != nil {
		return fmt.Errorf("set GRO of %s in %s to %v: %w", ifname, nsPath, on, err)
	}
	return nil
}

// GROEnabled says whether GRO is on for ifname inside the namespace at
// nsPath.
func GROEnabled(nsPath, ifname string) (bool, error) {
	v, err := getFeature(nsPath, ifname, unix.ETHTOOL_GGRO)
	if err != nil {
		return false, fmt.Errorf("read GRO of %s in %s: %w", ifname, nsPath, err)
	}
	return v != 0, nil
}

// SetTxChecksum turns transmit checksum offload of ifname inside the
// namespace at nsPath on or off. Off, the kernel computes full checksums
// before a frame leaves, as it must for a frame that crosses a wire
// (senders in tests of XDP paths).
func SetTxChecksum(nsPath, ifname string, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if err := setFeature(nsPath, ifname, unix.ETHTOOL_STXCSUM, v); err != nil {
		return fmt.Errorf("set TX checksum offload of %s in %s: %w", ifname, nsPath, err)
	}
	return nil
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with ifr_data.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte // the rest of the ifreq union
}

func ethtool(nsPath, ifname string, v *ethtoolValue) error {
	if len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("interface name %q too long", ifname)
	}
	return Do(nsPath, func() error {
		// The ioctl goes to the namespace the socket was created in.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		ifr := &ifreqData{data: unsafe.Pointer(v)}
		copy(ifr.name[:], ifname)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(ifr)))
		runtime.KeepAlive(ifr)
		runtime.KeepAlive(v)
		if errno != 0 {
			return fmt.Errorf("ethtool ioctl %#x: %w", v.cmd, errno)
		}
		return nil
	})
}

func setFeature(nsPath, ifname string, cmd, value uint32) error {
	return ethtool(nsPath, ifname, &ethtoolValue{cmd: cmd, data: value})
}

func getFeature(nsPath, ifname string, cmd uint32) (uint32, error) {
	v := &ethtoolValue{cmd: cmd}
	err := ethtool(nsPath, ifname, v)
	return v.data, err
}
