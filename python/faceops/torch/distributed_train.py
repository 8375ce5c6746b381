"""A runnable recipe: the driver's CNN backbone (faceops train --backbone cnn) trained with the class-sharded margin softmax
(faceops.torch.distributed.ShardedMarginSoftmaxLoss) on an identity folder (ROOT/<identity>/<image>,
e.g. ORL), one process per rank under torchrun:

    torchrun --standalone --nproc_per_node 2 -m faceops.torch.distributed_train --data orl_faces

On GPUs pass --backend nccl (each rank takes the GPU of its LOCAL_RANK); over several nodes run the
same command on every node with --nnodes N --rdzv_backend c10d --rdzv_endpoint HOST:PORT (see
docs/distributed.md).  Each rank draws its own batch; the backbone is wrapped in
DistributedDataParallel with a summing gradient hook, so every parameter's gradient is that of one
process training on the concatenated global batch.  At the end the head's shards and the backbone
are saved under --out (re-loadable at any world size with ShardedMarginSoftmaxLoss.load_shards).
"""

import argparse
import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

from faceops.driver import data
from faceops.driver.torch_model import build_network
from faceops.torch.distributed import ShardedMarginSoftmaxLoss, sum_gradients_hook


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="identity folder ROOT/<identity>/<image>, e.g. ORL")
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32, help="images per rank and step")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--margin", default="cosface")
    parser.add_argument("--scale", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/distributed", help="checkpoint folder")
    args = parser.parse_args(argv)

    dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=120))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)  # the same initial backbone on every rank
    faces = data.load_identity_folder(args.data, size=32)
    images = torch.tensor(faces.images, device=device)
    labels = torch.tensor(faces.labels, device=device)

    backbone = build_network(args.dim).sized_for(images.shape[-1]).to(device)  # the driver's --backbone cnn
    backbone = torch.nn.parallel.DistributedDataParallel(backbone, device_ids=[device.index] if device.index is not None else None)
    backbone.register_comm_hook(None, sum_gradients_hook)
    head = ShardedMarginSoftmaxLoss(len(faces.names), args.dim, args.margin, args.scale, args.sample_rate,
                                    seed=args.seed, device=device)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(args.seed * 1000 + rank)  # each rank its own batches
    for step in range(args.steps):
        batch = torch.tensor(rng.choice(len(labels), args.batch, replace=False), device=device)
        loss = head(backbone(images[batch][:, None]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}  (global batch {world_size * args.batch}, "
                  f"{len(faces.names)} classes over {world_size} ranks)", flush=True)
    os.makedirs(args.out, exist_ok=True)
    torch.save(head.state_dict(), os.path.join(args.out, f"head_rank{rank}.pt"))
    if rank == 0:
        torch.save(backbone.module.state_dict(), os.path.join(args.out, "backbone.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
