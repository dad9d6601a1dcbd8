/*
 * blk.h: the virtio block driver's entry points beyond tests.h, for the test
 * table (blk-bench) and for badring.c (which needs the started queue).
 */
#ifndef GUEST_BLK_H
#define GUEST_BLK_H
#include "kernel.h"

struct vq;

/* blk-bench: sequential 64 KiB reads (MB/s), random 4 KiB reads at queue depth
 * 1 and 32 (IOPS); lgbench_secs=N sets each random phase's length (default 1). */
int test_blk_bench(char *why, size_t whylen);

/* Find and start the first block device (once); 0 when it is up. */
int blk_init(void);
/* The started request queue, or NULL when there is no disk. */
struct vq *blk_queue(void);
/* Disk size in 512-byte sectors (0 without a disk). */
u64 blk_capacity(void);
/* Synchronous I/O on direct-mapped buffers: 1 on success, 0 with why. */
int blk_read(u64 sector, void *buf, u32 nsect, char *why, size_t whylen);
int blk_write(u64 sector, void *buf, u32 nsect, char *why, size_t whylen);
#endif
