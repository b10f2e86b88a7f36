/*
 * fixed_random.c: makes an aarch64 guest's random numbers fixed, so that instruction
 * counts under qemu (insn_count.c) repeat exactly from run to run.
 *
 * Rust's standard library seeds every HashMap from getrandom(2) (SipHash keys), and
 * tract builds and walks hash maps while it loads and optimizes a model, so with real
 * randomness the same program executes a slightly different number of instructions each
 * time (about +-0.1 % of a model load, measured). qemu-user 7.2 passes getrandom straight
 * to the host (its -seed option only fixes AT_RANDOM), so the guest gets this instead,
 * with qemu-aarch64 -E LD_PRELOAD=.../libfixed_random.so: glibc's getrandom() returns
 * a fixed byte pattern. Rust's std calls that libc function when the C library has it.
 *
 * For measurement only: never load this into a program whose randomness matters.
 * Built by tools/qemu-plugin/build with aarch64-linux-gnu-gcc.
 */

#include <stddef.h>
#include <sys/types.h>

ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
    (void)flags;
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        p[i] = (unsigned char)(0x5a ^ (i * 131));
    }
    return (ssize_t)len;
}
