package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type sock_key -type endpoint_key -type endpoint -type sk_state -type sock_rec -type counter -type fallback_reason -type path_mode redirect redirect.c -- -I.
