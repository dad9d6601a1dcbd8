/* tests.h: the test modes each part of the Guest contributes (see tests.c for the table). */
#ifndef GUEST_TESTS_H
#define GUEST_TESTS_H
#include "kernel.h"

/* blk.c */
int test_blk_read(char *why, size_t whylen);
int test_blk_write(char *why, size_t whylen);
int test_blk_stress(char *why, size_t whylen);
void blk_demo(void);		/* demo: print the ext2 superblock of /dev/vda (or that there is no disk) */
/* net.c */
int test_net(char *why, size_t whylen);
void net_demo(void);		/* demo: one line about the network device, if any */
#endif
