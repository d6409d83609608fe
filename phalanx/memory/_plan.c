/* phalanx.memory._plan: the plan stage's passes over a flush in C.
 *
 * NOTE: [Native plan] the plan stage (memory/layout.py, runtime/steps.py) was whole-flush numpy
 * passes plus loops whose work per item is a few array reads and one small Python object: the
 * reader order of each batch, the entries of every operand list, the fused runs, the operand
 * tuples, one Step per batch. A numpy pass costs about a microsecond of fixed cost (dozens a
 * flush), a Python loop an interpreter dispatch per item; here each is one C pass over the flush,
 * tens of nanoseconds an item. The numpy / Python twins stay (memory/native.py picks one or the
 * other; ``PHALANX_NATIVE=0`` selects the twins), with the same results (tests compare them).
 *
 *   reader_order(order, bounds, arg_start, arg_code, value_node)
 *       NOTE: [Reader order] for a whole flush: first reads found in one pass over the operands,
 *       then each batch that needs it sorted in place (a merge sort), later batches first;
 *       returns the batches it sorted, or None when no node reads another.
 *   list_reads(order, node_start, list_batch, list_pos, arg_start, arg_code, value_row,
 *              value_aval_id, codes, rows, broken, head, arena)
 *       the entries of every operand list (codes, rows) and per list whether its rows are a slice
 *       (broken), its first row and its arena, filled into the last five arrays.
 *   gather_runs(gathered, list_batch, list_pos, arena, list_start, rows, host)
 *       NOTE: [Fused gathers]: the rows of every gathered list, then of every run of them, into
 *       host; returns (entries, lengths, runs).
 *   fill_operands(target, index, kind, arena, lo, size, views)
 *       target[index[i]] = (kind, arena[i], views[i] or (lo[i], lo[i] + size[i])).
 *   assemble_steps(step_type, batches, sids, sigs, sizes, lists, outs, node_start, operands,
 *                  outputs, inst_of, fused_of, stacked)
 *       one step_type(...) per batch (runtime/steps.py, build_steps' last loop).
 *
 * Integer arrays are read through the buffer protocol (no numpy headers at build time): they must
 * be C-contiguous 8-byte integers (numpy int64); anything else is a TypeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    Py_buffer view;
    int64_t *data;
    Py_ssize_t len;
} IntArray;

static int
int_array(PyObject *obj, IntArray *out, int writable, const char *name)
{
    out->data = NULL;
    if (PyObject_GetBuffer(obj, &out->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = out->view.format ? out->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (out->view.itemsize != 8 || (strcmp(f, "l") != 0 && strcmp(f, "q") != 0) || out->view.ndim > 1) {
        PyErr_Format(PyExc_TypeError, "%s: expected a 1-d int64 array", name);
        PyBuffer_Release(&out->view);
        return -1;
    }
    out->data = (int64_t *)out->view.buf;
    out->len = out->view.len / 8;
    return 0;
}

static void
release(IntArray *a)
{
    if (a->data != NULL) {
        PyBuffer_Release(&a->view);
        a->data = NULL;
    }
}

/* *** reader_order *** */

/* Scratch memory kept across calls (the GIL is held throughout): a fresh block of a few hundred
 * KB would cost a page fault per 4 KB each flush, more than the work itself. */
static void *scratch_block = NULL;
static size_t scratch_size = 0;

static void *
scratch(size_t size)
{
    if (size > scratch_size) {
        void *bigger = PyMem_Realloc(scratch_block, size);
        if (bigger == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        scratch_block = bigger;
        scratch_size = size;
    }
    return scratch_block;
}

typedef struct {
    int64_t key;
    int64_t at;     /* position in the batch */
} Keyed;

/* Stable sort of items[0:n] by key: insertion sort on runs of 16, then bottom-up merges through
 * spare (n items). glibc's qsort costs ~60 ns an item here (generic element moves); this ~10. */
static void
stable_sort(Keyed *items, Keyed *spare, int64_t n)
{
    const int64_t run = 16;
    for (int64_t lo = 0; lo < n; lo += run) {
        int64_t hi = lo + run < n ? lo + run : n;
        for (int64_t i = lo + 1; i < hi; i++) {
            Keyed x = items[i];
            int64_t j = i;
            while (j > lo && items[j - 1].key > x.key) {
                items[j] = items[j - 1];
                j--;
            }
            items[j] = x;
        }
    }
    Keyed *from = items, *to = spare;
    for (int64_t width = run; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {     /* branch-free: keys come in no predictable order */
                int64_t right = from[j].key < from[i].key;      /* ties: the left one */
                to[k++] = from[right ? j : i];
                j += right;
                i += 1 - right;
            }
            while (i < mid)
                to[k++] = from[i++];
            while (j < hi)
                to[k++] = from[j++];
        }
        Keyed *t = from;
        from = to;
        to = t;
    }
    if (from != items)
        memcpy(items, from, sizeof(Keyed) * (size_t)n);
}

/* NOTE: [Reader order] (memory/layout.py) in one pass over the operands: order (the schedule's
 * batches concatenated, bounds[b]:bounds[b+1] being batch b) is sorted in place, batch by batch;
 * returns the batches it sorted (a list, later batches first), or None when nothing is read. */
static PyObject *
reader_order(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "reader_order(order, bounds, arg_start, arg_code, value_node)");
        return NULL;
    }
    IntArray order = {0}, bounds = {0}, arg_start = {0}, arg_code = {0}, value_node = {0};
    PyObject *result = NULL;
    if (int_array(args[0], &order, 1, "order") < 0 || int_array(args[1], &bounds, 0, "bounds") < 0
        || int_array(args[2], &arg_start, 0, "arg_start") < 0 || int_array(args[3], &arg_code, 0, "arg_code") < 0
        || int_array(args[4], &value_node, 0, "value_node") < 0)
        goto done;
    int64_t n = arg_start.len - 1, num = bounds.len - 1, m = order.len;
    if (n < 0 || num < 0 || bounds.data[0] != 0 || bounds.data[num] != m || arg_start.data[n] > arg_code.len) {
        PyErr_SetString(PyExc_ValueError, "reader_order: bounds or arg_start do not fit order or arg_code");
        goto done;
    }
    /* 4 arrays of n, the batches sorted (num), the sorted nodes of one batch (m + 1), then the
     * sort's items and spare items. Nothing below allocates a Python object until the scratch is
     * no longer used (a collection could run a finalizer that plans again, reusing it). */
    int64_t *block = scratch(sizeof(int64_t) * (4 * (size_t)n + (size_t)num + (size_t)m + 1)
                             + sizeof(Keyed) * 2 * ((size_t)m + 1));
    if (block == NULL)
        goto done;
    int64_t *batch_of = block, *row = batch_of + n, *static_of = row + n, *reader_of = static_of + n;
    int64_t *sorted = reader_of + n, *nodes = sorted + num, count = 0;
    for (int64_t v = 0; v < n; v++) {
        batch_of[v] = num;
        row[v] = v;
    }
    int64_t widest = 0;
    for (int64_t b = 0; b < num; b++) {
        int64_t lo = bounds.data[b], hi = bounds.data[b + 1];
        if (lo > hi) {
            PyErr_SetString(PyExc_ValueError, "reader_order: bounds decrease");
            goto done;
        }
        widest = hi - lo > widest ? hi - lo : widest;
        for (int64_t i = lo; i < hi; i++) {
            int64_t v = order.data[i];
            if (v < 0 || v >= n) {
                PyErr_Format(PyExc_ValueError, "reader_order: batch %lld holds node %lld of %lld", (long long)b,
                             (long long)v, (long long)n);
                goto done;
            }
            batch_of[v] = b;
            row[v] = i - lo;
        }
    }
    /* stride: one more than the largest position of a lazy operand (numbers read nothing) */
    int64_t stride = 0;
    for (int64_t r = 0; r < n; r++) {
        int64_t a0 = arg_start.data[r], a1 = arg_start.data[r + 1];
        if (a0 < 0 || a1 < a0 || a1 > arg_code.len) {
            PyErr_SetString(PyExc_ValueError, "reader_order: arg_start is not a valid CSR");
            goto done;
        }
        for (int64_t i = a0; i < a1; i++) {
            int64_t code = arg_code.data[i];
            if (code >= 0) {
                if (code >= value_node.len || value_node.data[code] < 0 || value_node.data[code] >= n) {
                    PyErr_Format(PyExc_ValueError, "reader_order: node %lld reads an unknown value %lld",
                                 (long long)r, (long long)code);
                    goto done;
                }
                stride = i - a0 + 1 > stride ? i - a0 + 1 : stride;
            }
        }
    }
    if (stride == 0 || num == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* first reads: smallest (reader batch, position); of equal ones the largest reader */
    int64_t unread = (num + 1) * stride;
    for (int64_t v = 0; v < n; v++) {
        static_of[v] = unread;
        reader_of[v] = v;
    }
    for (int64_t r = 0; r < n; r++) {
        int64_t a0 = arg_start.data[r], base = batch_of[r] * stride;
        for (int64_t i = a0; i < arg_start.data[r + 1]; i++) {
            int64_t code = arg_code.data[i];
            if (code < 0)
                continue;
            int64_t p = value_node.data[code], key = base + (i - a0);
            if (key < static_of[p] || (key == static_of[p] && r > reader_of[p])) {
                static_of[p] = key;
                reader_of[p] = r;
            }
        }
    }
    int64_t width = widest + 1;
    Keyed *keyed = (Keyed *)(nodes + m + 1);
    for (int64_t b = num - 1; b >= 0; b--) {     /* later batches first: their rows are final */
        int64_t lo = bounds.data[b], k = bounds.data[b + 1] - lo, read = 0;
        if (k < 2)
            continue;
        for (int64_t i = 0; i < k && !read; i++)
            read = static_of[order.data[lo + i]] < unread;
        if (!read)      /* nobody reads this batch: it keeps its order */
            continue;
        int64_t in_order = 1;
        for (int64_t i = 0; i < k; i++) {
            int64_t v = order.data[lo + i];
            keyed[i].key = static_of[v] * width + row[reader_of[v]];
            keyed[i].at = i;
            in_order &= i == 0 || keyed[i - 1].key <= keyed[i].key;
        }
        if (in_order)       /* often so (a chain's steps): nothing moves, rows stay */
            continue;
        stable_sort(keyed, keyed + m + 1, k);
        for (int64_t i = 0; i < k; i++)
            nodes[i] = order.data[lo + keyed[i].at];
        for (int64_t i = 0; i < k; i++) {
            order.data[lo + i] = nodes[i];
            row[nodes[i]] = i;
        }
        sorted[count++] = b;
    }
    int64_t *ids = PyMem_Malloc(sizeof(int64_t) * (size_t)(count + 1));     /* off the scratch first */
    if (ids == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(ids, sorted, sizeof(int64_t) * (size_t)count);
    result = PyList_New(count);
    for (int64_t i = 0; result != NULL && i < count; i++) {
        PyObject *index = PyLong_FromLongLong(ids[i]);
        if (index == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, index);
    }
    PyMem_Free(ids);
done:
    release(&order);
    release(&bounds);
    release(&arg_start);
    release(&arg_code);
    release(&value_node);
    return result;
}

/* *** list_reads *** */

/* The entries of every operand list of a flush, in list-major order (runtime/steps.py): list l is
 * operand list_pos[l] of the nodes of batch list_batch[l], order[node_start[b]:node_start[b+1]].
 * Fills codes and rows (one per entry, list after list), and per list: broken (1 unless its rows
 * are consecutive and increasing: a slice), head (its first row), arena (its first value's arena;
 * that of value 0 for an immediate). */
static PyObject *
list_reads(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "list_reads(order, node_start, list_batch, list_pos, arg_start, arg_code, "
                                         "value_row, value_aval_id, codes, rows, broken, head, arena)");
        return NULL;
    }
    static const char *names[13] = {"order", "node_start", "list_batch", "list_pos", "arg_start", "arg_code",
                                    "value_row", "value_aval_id", "codes", "rows", "broken", "head", "arena"};
    IntArray a[13];
    PyObject *result = NULL;
    int got = 0;
    for (; got < 13; got++)
        if (int_array(args[got], &a[got], got >= 8, names[got]) < 0)
            goto done;
    int64_t *order = a[0].data, *node_start = a[1].data, *list_batch = a[2].data, *list_pos = a[3].data;
    int64_t *arg_start = a[4].data, *arg_code = a[5].data, *value_row = a[6].data, *aval = a[7].data;
    int64_t *codes = a[8].data, *rows = a[9].data, *broken = a[10].data, *head = a[11].data, *arena = a[12].data;
    int64_t num = a[1].len - 1, nlists = a[2].len, nodes = a[4].len - 1, k = 0;
    if (num < 0 || a[3].len != nlists || a[10].len != nlists || a[11].len != nlists || a[12].len != nlists
        || a[9].len != a[8].len || node_start[num] > a[0].len) {
        PyErr_SetString(PyExc_ValueError, "list_reads: arrays differ in length");
        goto done;
    }
    for (int64_t l = 0; l < nlists; l++) {
        int64_t b = list_batch[l], p = list_pos[l];
        if (b < 0 || b >= num || node_start[b] > node_start[b + 1] || node_start[b] < 0) {
            PyErr_Format(PyExc_ValueError, "list_reads: list %lld names no batch", (long long)l);
            goto done;
        }
        int64_t lo = node_start[b], hi = node_start[b + 1], bad = 0, first = k;
        if (k + hi - lo > a[8].len) {
            PyErr_SetString(PyExc_ValueError, "list_reads: codes too short for the lists");
            goto done;
        }
        for (int64_t i = lo; i < hi; i++, k++) {
            int64_t node = order[i];
            if (node < 0 || node >= nodes || p < 0 || arg_start[node] + p >= arg_start[node + 1]
                || arg_start[node + 1] > a[5].len) {
                PyErr_Format(PyExc_ValueError, "list_reads: node %lld has no operand %lld", (long long)node,
                             (long long)p);
                goto done;
            }
            int64_t code = arg_code[arg_start[node] + p], v = code > 0 ? code : 0;
            if (v >= a[6].len || v >= a[7].len) {
                PyErr_Format(PyExc_ValueError, "list_reads: node %lld reads an unknown value %lld", (long long)node,
                             (long long)code);
                goto done;
            }
            codes[k] = code;
            rows[k] = value_row[v];
            bad |= k > first && rows[k] != rows[k - 1] + 1;
        }
        broken[l] = bad;
        if (hi > lo) {
            head[l] = rows[first];
            arena[l] = aval[codes[first] > 0 ? codes[first] : 0];
        } else {
            head[l] = 0;
            arena[l] = aval[0];
        }
    }
    if (k != a[8].len) {
        PyErr_SetString(PyExc_ValueError, "list_reads: codes longer than the lists");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    while (got-- > 0)
        release(&a[got]);
    return result;
}

/* *** gather_runs *** */

/* NOTE: [Fused gathers] (runtime/steps.py) of a flush in one pass. gathered[l] (bools): list l is
 * gathered. Writes into host the rows of every gathered list, list after list, then the rows of
 * every run (two or more gathered lists of one batch at consecutive positions reading one arena);
 * returns (entries written, [length of each gathered list, then of each run], [(batch, arena,
 * first position, number of lists) of each run]). host must hold 2 * len(rows) entries. */
static PyObject *
gather_runs(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "gather_runs(gathered, list_batch, list_pos, arena, list_start, rows, host)");
        return NULL;
    }
    Py_buffer flags;
    IntArray a[6];
    static const char *names[6] = {"list_batch", "list_pos", "arena", "list_start", "rows", "host"};
    PyObject *lengths = NULL, *runs = NULL, *result = NULL;
    int got = 0;
    if (PyObject_GetBuffer(args[0], &flags, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (flags.itemsize != 1 || flags.ndim > 1 || flags.format == NULL || strchr("?bB", flags.format[0]) == NULL) {
        PyErr_SetString(PyExc_TypeError, "gathered: expected a 1-d bool array");
        goto done;
    }
    for (; got < 6; got++)
        if (int_array(args[got + 1], &a[got], got == 5, names[got]) < 0)
            goto done;
    const char *gathered = flags.buf;
    int64_t *list_batch = a[0].data, *list_pos = a[1].data, *arena = a[2].data, *list_start = a[3].data;
    int64_t *rows = a[4].data, *host = a[5].data, nlists = flags.len, used = 0;
    if (a[0].len != nlists || a[1].len != nlists || a[2].len != nlists || a[3].len != nlists + 1
        || list_start[nlists] > a[4].len || a[5].len < 2 * a[4].len) {
        PyErr_SetString(PyExc_ValueError, "gather_runs: arrays differ in length");
        goto done;
    }
    for (int64_t l = 0; l < nlists; l++)
        if (list_start[l] < 0 || list_start[l] > list_start[l + 1]) {
            PyErr_SetString(PyExc_ValueError, "gather_runs: list_start decreases");
            goto done;
        }
    lengths = PyList_New(0);
    runs = PyList_New(0);
    if (lengths == NULL || runs == NULL)
        goto done;
    for (int64_t l = 0; l < nlists; l++) {
        if (!gathered[l])
            continue;
        int64_t lo = list_start[l], hi = list_start[l + 1];
        memcpy(host + used, rows + lo, sizeof(int64_t) * (size_t)(hi - lo));
        used += hi - lo;
        PyObject *n = PyLong_FromLongLong(hi - lo);
        if (n == NULL || PyList_Append(lengths, n) < 0) {
            Py_XDECREF(n);
            goto done;
        }
        Py_DECREF(n);
    }
    for (int64_t l = 0; l < nlists;) {
        int64_t end = l + 1;
        while (gathered[l] && end < nlists && gathered[end] && list_batch[end] == list_batch[l]
               && list_pos[end] == list_pos[end - 1] + 1 && arena[end] == arena[l])
            end++;
        if (end - l >= 2) {
            int64_t lo = list_start[l], hi = list_start[end];
            memcpy(host + used, rows + lo, sizeof(int64_t) * (size_t)(hi - lo));
            used += hi - lo;
            PyObject *n = PyLong_FromLongLong(hi - lo);
            PyObject *run = Py_BuildValue("(LLLL)", (long long)list_batch[l], (long long)arena[l],
                                          (long long)list_pos[l], (long long)(end - l));
            if (n == NULL || run == NULL || PyList_Append(lengths, n) < 0 || PyList_Append(runs, run) < 0) {
                Py_XDECREF(n);
                Py_XDECREF(run);
                goto done;
            }
            Py_DECREF(n);
            Py_DECREF(run);
        }
        l = end;
    }
    result = Py_BuildValue("(LOO)", (long long)used, lengths, runs);
done:
    Py_XDECREF(lengths);
    Py_XDECREF(runs);
    PyBuffer_Release(&flags);
    while (got-- > 0)
        release(&a[got]);
    return result;
}

/* *** fill_operands *** */

static PyObject *
fill_operands(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fill_operands(target: list, index, kind, arena, lo, size, views)");
        return NULL;
    }
    PyObject *target = args[0], *kind = args[2], *views = NULL, *result = NULL;
    IntArray index = {0}, arena = {0}, lo = {0}, size = {0};
    int has_index = args[1] != Py_None, has_views = args[6] != Py_None;
    if ((has_index && int_array(args[1], &index, 0, "index") < 0) || int_array(args[3], &arena, 0, "arena") < 0)
        goto done;
    Py_ssize_t n = arena.len;
    if (has_views) {
        views = PySequence_Fast(args[6], "fill_operands: views must be a sequence");
        if (views == NULL)
            goto done;
        if (PySequence_Fast_GET_SIZE(views) < n) {
            PyErr_SetString(PyExc_ValueError, "fill_operands: fewer views than operands");
            goto done;
        }
    } else if (int_array(args[4], &lo, 0, "lo") < 0 || int_array(args[5], &size, 0, "size") < 0) {
        goto done;
    } else if (lo.len != n || size.len != n) {
        PyErr_SetString(PyExc_ValueError, "fill_operands: arena, lo and size differ in length");
        goto done;
    }
    if (has_index && index.len != n) {
        PyErr_SetString(PyExc_ValueError, "fill_operands: index and arena differ in length");
        goto done;
    }
    Py_ssize_t slots = PyList_GET_SIZE(target);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = has_index ? (Py_ssize_t)index.data[i] : i;
        if (at < 0 || at >= slots) {
            PyErr_SetString(PyExc_IndexError, "fill_operands: index outside the target list");
            goto done;
        }
        PyObject *payload;
        if (has_views) {
            payload = Py_NewRef(PySequence_Fast_GET_ITEM(views, i));
        } else {
            payload = Py_BuildValue("(LL)", (long long)lo.data[i], (long long)(lo.data[i] + size.data[i]));
            if (payload == NULL)
                goto done;
        }
        PyObject *item = Py_BuildValue("(OLN)", kind, (long long)arena.data[i], payload);
        if (item == NULL)
            goto done;
        PyObject *old = PyList_GET_ITEM(target, at);
        PyList_SET_ITEM(target, at, item);
        Py_XDECREF(old);
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(views);
    release(&index);
    release(&arena);
    release(&lo);
    release(&size);
    return result;
}

/* *** assemble_steps *** */

static PyObject *empty_tuple = NULL;

/* NOTE: [Joint writes] (runtime/steps.py): (arena, lo, hi) if every output is a row slice (kind
 * 0) of one arena, each right after the last; else None. -1 on error. */
static PyObject *
joint_of(PyObject *outs)
{
    Py_ssize_t n = PyList_GET_SIZE(outs);
    PyObject *arena = NULL;
    long long lo = 0, hi = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *out = PyList_GET_ITEM(outs, k);
        if (!PyTuple_Check(out) || PyTuple_GET_SIZE(out) != 3)
            Py_RETURN_NONE;
        PyObject *kind = PyTuple_GET_ITEM(out, 0), *rows = PyTuple_GET_ITEM(out, 2);
        if (!PyLong_Check(kind) || PyLong_AsLong(kind) != 0 || !PyTuple_Check(rows) || PyTuple_GET_SIZE(rows) != 2)
            Py_RETURN_NONE;
        long long first = PyLong_AsLongLong(PyTuple_GET_ITEM(rows, 0));
        long long last = PyLong_AsLongLong(PyTuple_GET_ITEM(rows, 1));
        if (PyErr_Occurred())
            return NULL;
        if (k == 0) {
            arena = PyTuple_GET_ITEM(out, 1);
            lo = first;
        } else {
            int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(out, 1), arena, Py_EQ);
            if (same < 0)
                return NULL;
            if (!same || first != hi)
                Py_RETURN_NONE;
        }
        hi = last;
    }
    return Py_BuildValue("(OLL)", arena, lo, hi);
}

static PyObject *
assemble_steps(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "assemble_steps(step_type, batches, sids, sigs, sizes, lists, outs, "
                                         "node_start, operands, outputs, inst_of, fused_of, stacked)");
        return NULL;
    }
    PyObject *step_type = args[0], *batches = NULL, *sids = NULL, *sigs = NULL, *operands = args[8];
    PyObject *outputs = args[9], *inst_of = args[10], *fused_of = args[11], *stacked = args[12];
    PyObject *steps = NULL, *result = NULL;
    IntArray sizes = {0}, lists = {0}, outs = {0}, node_start = {0};
    if (!PyList_Check(operands) || !PyList_Check(outputs) || !PyDict_Check(fused_of)) {
        PyErr_SetString(PyExc_TypeError, "assemble_steps: operands and outputs must be lists, fused_of a dict");
        return NULL;
    }
    batches = PySequence_Fast(args[1], "assemble_steps: batches must be a sequence");
    sids = PySequence_Fast(args[2], "assemble_steps: sids must be a sequence");
    sigs = PySequence_Fast(args[3], "assemble_steps: sigs must be a sequence");
    if (batches == NULL || sids == NULL || sigs == NULL || int_array(args[4], &sizes, 0, "sizes") < 0
        || int_array(args[5], &lists, 0, "lists") < 0 || int_array(args[6], &outs, 0, "outs") < 0
        || int_array(args[7], &node_start, 0, "node_start") < 0)
        goto done;
    Py_ssize_t num = PySequence_Fast_GET_SIZE(batches);
    if (PySequence_Fast_GET_SIZE(sids) != num || sizes.len != num || lists.len != num + 1 || outs.len != num + 1
        || node_start.len != num + 1) {
        PyErr_SetString(PyExc_ValueError, "assemble_steps: batches, sids, sizes and bounds differ in length");
        goto done;
    }
    if (lists.data[num] > PyList_GET_SIZE(operands) || outs.data[num] > PyList_GET_SIZE(outputs)) {
        PyErr_SetString(PyExc_ValueError, "assemble_steps: bounds past the operand or output lists");
        goto done;
    }
    steps = PyList_New(num);
    if (steps == NULL)
        goto done;
    for (Py_ssize_t b = 0; b < num; b++) {
        PyObject *sid = PySequence_Fast_GET_ITEM(sids, b);
        Py_ssize_t s = PyLong_AsSsize_t(sid);
        if (s == -1 && PyErr_Occurred())
            goto done;
        if (s < 0 || s >= PySequence_Fast_GET_SIZE(sigs)) {
            PyErr_Format(PyExc_IndexError, "assemble_steps: batch %zd has an unknown op type %zd", b, s);
            goto done;
        }
        int64_t l0 = lists.data[b], l1 = lists.data[b + 1], o0 = outs.data[b], o1 = outs.data[b + 1];
        PyObject *key = PyLong_FromSsize_t(b);
        if (key == NULL)
            goto done;
        PyObject *fused = PyDict_GetItemWithError(fused_of, key);     /* borrowed */
        Py_DECREF(key);
        if (fused == NULL && PyErr_Occurred())
            goto done;
        fused = fused == NULL ? empty_tuple : fused;
        PyObject *whole = Py_None, *joint = Py_None, *ops = NULL, *outs_b = NULL, *insts = NULL, *size = NULL;
        Py_INCREF(whole);
        Py_INCREF(joint);
        if (PyTuple_Check(fused) && PyTuple_GET_SIZE(fused) == 1) {
            PyObject *run = PyTuple_GET_ITEM(fused, 0);
            int in_stacked = PySequence_Contains(stacked, sid);
            if (in_stacked < 0 || !PyTuple_Check(run) || PyTuple_GET_SIZE(run) != 3)
                goto step_failed;
            Py_ssize_t positions = PyObject_Length(PyTuple_GET_ITEM(run, 2));
            if (positions < 0)
                goto step_failed;
            if (!in_stacked && positions == l1 - l0) {     /* NOTE: [Whole reads] */
                PyObject *each = PyList_New(l1 - l0);
                if (each == NULL)
                    goto step_failed;
                for (int64_t p = 0; p < l1 - l0; p++) {
                    PyObject *n = PyLong_FromLongLong(sizes.data[b]);
                    if (n == NULL) {
                        Py_DECREF(each);
                        goto step_failed;
                    }
                    PyList_SET_ITEM(each, p, n);
                }
                Py_DECREF(whole);
                whole = Py_BuildValue("(OON)", PyTuple_GET_ITEM(run, 0), PyTuple_GET_ITEM(run, 1), each);
                if (whole == NULL)
                    goto step_failed;
            }
        }
        ops = PyList_GetSlice(operands, l0, l1);
        outs_b = PyList_GetSlice(outputs, o0, o1);
        insts = PySequence_GetSlice(inst_of, node_start.data[b], node_start.data[b + 1]);
        size = PyLong_FromLongLong(sizes.data[b]);
        if (ops == NULL || outs_b == NULL || insts == NULL || size == NULL)
            goto step_failed;
        if (o1 - o0 > 1) {
            Py_DECREF(joint);
            joint = joint_of(outs_b);
            if (joint == NULL)
                goto step_failed;
        }
        PyObject *call[9] = {PySequence_Fast_GET_ITEM(sigs, s), PySequence_Fast_GET_ITEM(batches, b), size, ops,
                             outs_b, insts, fused, whole, joint};
        PyObject *step = PyObject_Vectorcall(step_type, call, 9, NULL);
        if (step == NULL)
            goto step_failed;
        PyList_SET_ITEM(steps, b, step);
        Py_DECREF(whole);
        Py_DECREF(joint);
        Py_DECREF(ops);
        Py_DECREF(outs_b);
        Py_DECREF(insts);
        Py_DECREF(size);
        continue;
    step_failed:
        Py_XDECREF(whole);
        Py_XDECREF(joint);
        Py_XDECREF(ops);
        Py_XDECREF(outs_b);
        Py_XDECREF(insts);
        Py_XDECREF(size);
        goto done;
    }
    result = steps;
    steps = NULL;
done:
    Py_XDECREF(steps);
    Py_XDECREF(batches);
    Py_XDECREF(sids);
    Py_XDECREF(sigs);
    release(&sizes);
    release(&lists);
    release(&outs);
    release(&node_start);
    return result;
}

static PyMethodDef plan_methods[] = {
    {"reader_order", (PyCFunction)(void (*)(void))reader_order, METH_FASTCALL,
     "NOTE: [Reader order] for a whole flush: sort order in place, return the batches sorted."},
    {"list_reads", (PyCFunction)(void (*)(void))list_reads, METH_FASTCALL,
     "Codes, rows, and per list broken / head / arena of every operand list of a flush."},
    {"gather_runs", (PyCFunction)(void (*)(void))gather_runs, METH_FASTCALL,
     "NOTE: [Fused gathers] of a flush: host rows, lengths and runs, in one pass."},
    {"fill_operands", (PyCFunction)(void (*)(void))fill_operands, METH_FASTCALL,
     "target[index[i]] = (kind, arena[i], views[i] or (lo[i], lo[i] + size[i]))."},
    {"assemble_steps", (PyCFunction)(void (*)(void))assemble_steps, METH_FASTCALL,
     "One Step per batch (runtime/steps.py, build_steps)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef plan_module = {
    PyModuleDef_HEAD_INIT, "phalanx.memory._plan", "Native plan-stage loops (NOTE: [Native plan]).", -1,
    plan_methods,
};

PyMODINIT_FUNC
PyInit__plan(void)
{
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL)
        return NULL;
    return PyModule_Create(&plan_module);
}
