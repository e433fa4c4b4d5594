P
ĞŸÉ•šï:moby/tasks/create",
containerd.events.TaskCreate
moby-ctr0c­
ÑŸÉ•šï:k8s.io/containers/create"
!containerd.events.ContainerCreate\
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081localhost/patu/pause:3.9á
ÒŸÉ•šï:k8s.io/tasks/create"º
containerd.events.TaskCreate™
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081u/run/containerd/io.containerd.runtime.v2.task/k8s.io/5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081C
overlayoverlay"	index=off"
workdir=/w"upperdir=/u"lowerdir=/l"	/dev/null	/dev/null0’!‰
ÓŸÉ•šï:k8s.io/tasks/start"d
containerd.events.TaskStartE
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081’!‹
ÔŸÉ•šï:k8s.io/tasks/create"e
containerd.events.TaskCreateE
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d0Ì!‰
ÕŸÉ•šï:k8s.io/tasks/start"d
containerd.events.TaskStartE
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8dÌ!š
ÖŸÉ•šï:k8s.io/tasks/exec-added"p
containerd.events.TaskExecAddedM
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d	exec-1234Ÿ
×ŸÉ•šï:k8s.io/tasks/exit"{
containerd.events.TaskExit]
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d	exec-1234°"*îŸÉ•šï:£
ØŸÉ•šï:k8s.io/tasks/delete"}
containerd.events.TaskDelete]
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d°""îŸÉ•šï:*	exec-1234‚
ÙŸÉ•šï:k8s.io
/tasks/oom"_
containerd.events.TaskOOMB
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8dÛ
ÚŸÉ•šï:k8s.io/tasks/exit"¶
containerd.events.TaskExit—
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8dÌ! ‰*îŸÉ•šï:›
ÛŸÉ•šï:k8s.io/tasks/delete"u
containerd.events.TaskDeleteU
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8dÌ!‰"îŸÉ•šï:Û
ÜŸÉ•šï:k8s.io/tasks/exit"¶
containerd.events.TaskExit—
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081’! ‰*îŸÉ•šï:›
İŸÉ•šï:k8s.io/tasks/delete"u
containerd.events.TaskDeleteU
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081’!‰"îŸÉ•šï:’
ŞŸÉ•šï:k8s.io/containers/delete"g
!containerd.events.ContainerDeleteB
@9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d’
ßŸÉ•šï:k8s.io/containers/delete"g
!containerd.events.ContainerDeleteB
@5f0c6a1d0e8b4c6f9a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081\
àŸÉ•šï:k8s.io/tasks/start"7
containerd.events.TaskStart
plain-ctr-containerˆ'\
áŸÉ•šï:k8s.io/containers/delete"1
!containerd.events.ContainerDelete

never-seen