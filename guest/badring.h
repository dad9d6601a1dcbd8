/* badring.h: deliberately bad Guests for the Launcher's vring checks (lgbad=NAME). */
#ifndef GUEST_BADRING_H
#define GUEST_BADRING_H

/* Run the bad-ring mode NAME: it kicks a broken ring, so the Launcher should
 * kill us.  Returns 0 at once if NAME is not one of ours, 1 if it was ours (and
 * the Launcher, wrongly, let us live). */
int badring_run(const char *name);
#endif
