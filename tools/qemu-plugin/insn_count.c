/*
 * insn_count.c: a QEMU TCG plugin that counts the guest instructions a program executes.
 *
 * Perch uses it to give an ARM cost figure on an x86 host (tools/bench/qemu-count):
 * time under emulation says nothing about a board, but the number of aarch64
 * instructions an inference executes is exact, deterministic and comparable across
 * models, quantization modes and builds.
 *
 * Build (tools/qemu-plugin/build does this, fetching qemu-plugin.h from Debian's qemu
 * source package into target/qemu-plugin/):
 *
 *     gcc -O2 -shared -fPIC -Wall -Wextra -I target/qemu-plugin/include \
 *         $(pkg-config --cflags glib-2.0) -o libinsn_count.so insn_count.c
 *
 * Use (qemu-user 7.2, plugin API version 1):
 *
 *     qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu \
 *         -plugin target/qemu-plugin/libinsn_count.so,outfile=/tmp/n.txt ./program args
 *
 * Arguments (comma-separated after the plugin path):
 *   outfile=PATH  write the total as one decimal line to PATH (temporary file, fsync,
 *                 rename: a reader never sees half a number). Without it the total goes
 *                 to QEMU's log (stderr unless -D is given).
 *   mode=tb       (default) a callback per executed translation block adds the block's
 *                 instruction count to the executing vCPU's own counter; the counters
 *                 are summed at exit. Exact for any number of guest threads.
 *   mode=insn     an inline add per executed instruction into one shared counter.
 *                 Exact per instruction even if a block is left midway (a fault),
 *                 but TCG inline ops are not atomic: only exact for single-threaded
 *                 guests (the plugin warns when it saw more than one vCPU).
 *   mode=tb-inline  an inline add per executed block into one shared counter: the
 *                 cheapest, with the limits of both above.
 *
 * Every mode counts an instruction when it starts executing; a block left midway by
 * a fault counts whole in the tb modes. A user-mode program makes no such exits on
 * its normal path (system calls end a block), so the modes agree on it.
 *
 * At exit it reports `insn_count: N instructions (mode M, V vCPUs)` on QEMU's log.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* vCPU indices below this get their own counter; others share an atomic one. */
#define MAX_VCPUS 1024

enum mode { MODE_TB, MODE_INSN, MODE_TB_INLINE };

/* One cache line per vCPU, so threads do not contend on each other's counters. */
typedef struct {
    uint64_t insns;
    char pad[64 - sizeof(uint64_t)];
} vcpu_count;

static vcpu_count per_vcpu[MAX_VCPUS];
static uint64_t overflow_vcpus;    /* vCPU index >= MAX_VCPUS, added atomically */
static uint64_t shared_count;      /* the inline modes' counter */
static uint64_t vcpus_seen;        /* vCPUs initialised (guest threads in user mode) */
static enum mode mode = MODE_TB;
static const char *mode_name = "tb";
static char *outfile;

static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
    (void)id;
    (void)vcpu_index;
    __atomic_fetch_add(&vcpus_seen, 1, __ATOMIC_RELAXED);
}

static void tb_exec(unsigned int vcpu_index, void *udata)
{
    uint64_t n = (uint64_t)(uintptr_t)udata;
    if (vcpu_index < MAX_VCPUS) {
        per_vcpu[vcpu_index].insns += n;
    } else {
        __atomic_fetch_add(&overflow_vcpus, n, __ATOMIC_RELAXED);
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    switch (mode) {
    case MODE_TB:
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                             (void *)(uintptr_t)n);
        break;
    case MODE_TB_INLINE:
        qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                                 &shared_count, n);
        break;
    case MODE_INSN:
        for (size_t i = 0; i < n; i++) {
            qemu_plugin_register_vcpu_insn_exec_inline(
                qemu_plugin_tb_get_insn(tb, i), QEMU_PLUGIN_INLINE_ADD_U64,
                &shared_count, 1);
        }
        break;
    }
}

/* Writes "N\n" to outfile through a temporary file in the same folder. */
static bool write_total(uint64_t total)
{
    char *tmp = g_strdup_printf("%s.tmp.%d", outfile, (int)getpid());
    FILE *f = fopen(tmp, "w");
    bool ok = f != NULL;
    if (ok) {
        ok = fprintf(f, "%" PRIu64 "\n", total) > 0;
        ok = fflush(f) == 0 && ok;
        ok = fsync(fileno(f)) == 0 && ok;
        ok = fclose(f) == 0 && ok;
        ok = ok && rename(tmp, outfile) == 0;
    }
    if (!ok) {
        char *msg = g_strdup_printf("insn_count: cannot write %s: %s\n", outfile,
                                    strerror(errno));
        qemu_plugin_outs(msg);
        g_free(msg);
        unlink(tmp);
    }
    g_free(tmp);
    return ok;
}

static void plugin_exit(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    uint64_t total = shared_count + __atomic_load_n(&overflow_vcpus, __ATOMIC_RELAXED);
    for (size_t i = 0; i < MAX_VCPUS; i++) {
        total += per_vcpu[i].insns;
    }
    uint64_t vcpus = __atomic_load_n(&vcpus_seen, __ATOMIC_RELAXED);
    char *msg = g_strdup_printf("insn_count: %" PRIu64 " instructions (mode %s, %" PRIu64
                                " vCPUs)\n", total, mode_name, vcpus);
    qemu_plugin_outs(msg);
    g_free(msg);
    if (mode != MODE_TB && vcpus > 1) {
        qemu_plugin_outs("insn_count: warning: inline counters are not atomic and the "
                         "guest ran more than one thread; use mode=tb for an exact "
                         "count\n");
    }
    if (outfile != NULL) {
        write_total(total);
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (g_str_has_prefix(arg, "outfile=") && arg[8] != '\0') {
            outfile = g_strdup(arg + 8);
        } else if (strcmp(arg, "mode=tb") == 0) {
            mode = MODE_TB;
            mode_name = "tb";
        } else if (strcmp(arg, "mode=insn") == 0) {
            mode = MODE_INSN;
            mode_name = "insn";
        } else if (strcmp(arg, "mode=tb-inline") == 0) {
            mode = MODE_TB_INLINE;
            mode_name = "tb-inline";
        } else {
            fprintf(stderr, "insn_count: unknown argument \"%s\" (expected outfile=PATH "
                            "or mode=tb|insn|tb-inline)\n", arg);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
