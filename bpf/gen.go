package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type sock_key -type endpoint_key -type endpoint -type sk_state -type sock_rec -type counter -type fallback_reason -type path_mode -type endpoint_flags redirect redirect.c -- -I.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type route_key -type route -type route_flags -type hostport_key -type hostport -type flow_key -type flow -type flow_flags -type uplink -type uplink_mode -type port_kind -type xdp_counter -type local_key -type local_flow -type local_pending -type local_state -type local_counter xdp xdp.c -- -I.
