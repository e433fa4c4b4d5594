˜
•
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081!
io.cri-containerd.kindsandbox!
io.kubernetes.pod.namesmoke-alocalhost/patu/pause:3.9"
io.containerd.runc.v2*ð
6types.containerd.io/opencontainers/runtime-spec/1/Specµ{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"},"ociVersion":"1.1.0"}2	overlayfs:@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081BÐŸžÉ•šï:JÐŸžÉ•šï:ý
ú
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d#
io.cri-containerd.kind	container$
io.kubernetes.container.namebb-alocalhost/patu/busybox:1.35"
io.containerd.runc.v2*ò
6types.containerd.io/opencontainers/runtime-spec/1/Spec·{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"},"ociVersion":"1.1.0"}Z@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081K
I
plain-ctr-container
ownersomeone docker.io/library/busybox:latest