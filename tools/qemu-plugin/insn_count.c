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
 *   symbols=PATH  (mode=tb only) also count per guest symbol: each translation block
 *                 is charged to the symbol of its first instruction (QEMU's lookup in
 *                 the guest binary's symbol table, so the binary must not be stripped;
 *                 "?" where it has none), and PATH gets one "COUNT SYMBOL" line per
 *                 symbol that ran, most first. A profile in instructions rather than
 *                 time: tools/bench/qemu-profile.
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
static char *symbols_file;

/* Per symbol: its executed instructions (symbols=PATH). */
typedef struct {
    const char *name;
    uint64_t insns;
} symbol_count;

/* What a translation block charges per execution, and to which symbol. */
typedef struct {
    symbol_count *symbol;
    uint64_t n;
} tb_charge;

static GHashTable *symbols; /* name -> symbol_count*, under symbols_lock */
static GMutex symbols_lock;
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

static void tb_exec_symbol(unsigned int vcpu_index, void *udata)
{
    tb_charge *charge = udata;
    tb_exec(vcpu_index, (void *)(uintptr_t)charge->n);
    __atomic_fetch_add(&charge->symbol->insns, charge->n, __ATOMIC_RELAXED);
}

/* The charge of a block starting at `first` (never freed: blocks live as long). */
static tb_charge *charge_for(struct qemu_plugin_insn *first, size_t n)
{
    const char *name = qemu_plugin_insn_symbol(first);
    if (name == NULL) {
        name = "?";
    }
    g_mutex_lock(&symbols_lock);
    symbol_count *symbol = g_hash_table_lookup(symbols, name);
    if (symbol == NULL) {
        symbol = g_new0(symbol_count, 1);
        symbol->name = g_strdup(name);
        g_hash_table_insert(symbols, (gpointer)symbol->name, symbol);
    }
    g_mutex_unlock(&symbols_lock);
    tb_charge *charge = g_new0(tb_charge, 1);
    charge->symbol = symbol;
    charge->n = n;
    return charge;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    if (symbols_file != NULL && n > 0) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec_symbol, QEMU_PLUGIN_CB_NO_REGS,
                                             charge_for(qemu_plugin_tb_get_insn(tb, 0), n));
        return;
    }
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

static gint by_count(gconstpointer a, gconstpointer b)
{
    const symbol_count *x = *(symbol_count *const *)a;
    const symbol_count *y = *(symbol_count *const *)b;
    return x->insns < y->insns ? 1 : x->insns > y->insns ? -1 : strcmp(x->name, y->name);
}

/* Writes the per-symbol counts, most first. */
static void write_symbols(void)
{
    GPtrArray *all = g_ptr_array_new();
    GHashTableIter it;
    gpointer key, value;
    g_hash_table_iter_init(&it, symbols);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        g_ptr_array_add(all, value);
    }
    g_ptr_array_sort(all, by_count);
    FILE *f = fopen(symbols_file, "w");
    if (f == NULL) {
        char *msg = g_strdup_printf("insn_count: cannot write %s: %s\n", symbols_file,
                                    strerror(errno));
        qemu_plugin_outs(msg);
        g_free(msg);
    } else {
        for (guint i = 0; i < all->len; i++) {
            const symbol_count *c = g_ptr_array_index(all, i);
            fprintf(f, "%" PRIu64 " %s\n", c->insns, c->name);
        }
        fclose(f);
    }
    g_ptr_array_free(all, TRUE);
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
    if (symbols_file != NULL) {
        write_symbols();
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
        } else if (g_str_has_prefix(arg, "symbols=") && arg[8] != '\0') {
            symbols_file = g_strdup(arg + 8);
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
                            "symbols=PATH or mode=tb|insn|tb-inline)\n", arg);
            return -1;
        }
    }
    if (symbols_file != NULL && mode != MODE_TB) {
        fprintf(stderr, "insn_count: symbols=PATH needs mode=tb\n");
        return -1;
    }
    symbols = g_hash_table_new(g_str_hash, g_str_equal);
    qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
