/* phalanx.memory._plan: the per-batch loops of the plan stage in C.
 *
 * NOTE: [Native plan] the plan stage (memory/layout.py, runtime/steps.py) is whole-flush numpy
 * passes plus three loops whose work per item is a few array reads and one small Python object:
 * the reader-order sort of each batch, the operand tuples of every list, and one Step per batch.
 * In Python each item costs an interpreter dispatch and numpy's fixed cost on a tiny array (about
 * a microsecond a call); here it costs tens of nanoseconds. memory/native.py holds the Python
 * twins (same behaviour; ``PHALANX_NATIVE=0`` selects them) and picks one or the other.
 *
 *   reader_sort(order, static_in, reader_in, row, bounds, todo)
 *       for b in todo, in that order: sort order[bounds[b]:bounds[b+1]] (stably) by
 *       static_in[i] + row[reader_in[i]], in place, then row[node] = its new position.
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

/* *** reader_sort *** */

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
            while (i < mid && j < hi)
                to[k++] = from[j].key < from[i].key ? from[j++] : from[i++];    /* ties: the left one */
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

static PyObject *
reader_sort(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "reader_sort(order, static_in, reader_in, row, bounds, todo)");
        return NULL;
    }
    IntArray order = {0}, static_in = {0}, reader_in = {0}, row = {0}, bounds = {0}, todo = {0};
    Keyed *keyed = NULL;
    int64_t *nodes = NULL;
    PyObject *result = NULL;
    if (int_array(args[0], &order, 1, "order") < 0 || int_array(args[1], &static_in, 0, "static_in") < 0
        || int_array(args[2], &reader_in, 0, "reader_in") < 0 || int_array(args[3], &row, 1, "row") < 0
        || int_array(args[4], &bounds, 0, "bounds") < 0 || int_array(args[5], &todo, 0, "todo") < 0)
        goto done;
    if (static_in.len != order.len || reader_in.len != order.len) {
        PyErr_SetString(PyExc_ValueError, "reader_sort: order, static_in and reader_in differ in length");
        goto done;
    }
    int64_t widest = 0;
    for (Py_ssize_t t = 0; t < todo.len; t++) {
        int64_t b = todo.data[t];
        if (b < 0 || b + 1 >= bounds.len || bounds.data[b] < 0 || bounds.data[b] > bounds.data[b + 1]
            || bounds.data[b + 1] > order.len) {
            PyErr_Format(PyExc_ValueError, "reader_sort: batch %lld has no valid bounds", (long long)b);
            goto done;
        }
        if (bounds.data[b + 1] - bounds.data[b] > widest)
            widest = bounds.data[b + 1] - bounds.data[b];
    }
    keyed = PyMem_Malloc(sizeof(Keyed) * 2 * (widest + 1));     /* items, then the merge's spare */
    nodes = PyMem_Malloc(sizeof(int64_t) * (widest + 1));
    if (keyed == NULL || nodes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t t = 0; t < todo.len; t++) {
        int64_t b = todo.data[t], lo = bounds.data[b], n = bounds.data[b + 1] - lo;
        for (int64_t i = 0; i < n; i++) {
            int64_t r = reader_in.data[lo + i], node = order.data[lo + i];
            if (r < 0 || r >= row.len || node < 0 || node >= row.len) {
                PyErr_Format(PyExc_ValueError, "reader_sort: batch %lld reads a node outside row", (long long)b);
                goto done;
            }
            keyed[i].key = static_in.data[lo + i] + row.data[r];
            keyed[i].at = i;
        }
        stable_sort(keyed, keyed + widest + 1, n);
        for (int64_t i = 0; i < n; i++)
            nodes[i] = order.data[lo + keyed[i].at];
        for (int64_t i = 0; i < n; i++) {
            order.data[lo + i] = nodes[i];
            row.data[nodes[i]] = i;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(keyed);
    PyMem_Free(nodes);
    release(&order);
    release(&static_in);
    release(&reader_in);
    release(&row);
    release(&bounds);
    release(&todo);
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
    {"reader_sort", (PyCFunction)(void (*)(void))reader_sort, METH_FASTCALL,
     "Sort each listed batch of order by its reader key, in place (NOTE: [Reader order])."},
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
