/* phalanx.runtime._groups: the reads and writes of a run of twin batches (NOTE: [Op-type groups],
 * cells/group.py) in C.
 *
 * NOTE: [Native group reads] an inference flush of a BiLSTM runs ~50 group runs a mini-batch, each
 * deciding, per output and operand, whether the members' rows are one arena slice (joined) or
 * each member's own read (split). In Python that was ~50 us a run on these machines (list
 * comprehensions, tuple unpacking, comparisons: more than the views it makes), about 4% of the
 * tagger's time at hidden 256. Here it is one call; the views are still torch's own slicing
 * (``arenas[a][lo:hi]`` through the mapping protocol, exactly what the Python twin does). The
 * Python twin, runtime/native.py ``group_reads_py``, stays (``PHALANX_NATIVE=0`` selects it; tests
 * compare the two).
 *
 *   group_reads(members, arenas, read)
 *       members: the run's Steps (each with ``outputs`` and ``operands``, lists of (kind, arena or
 *       dtype, payload) with kind 0 a row slice whose payload is (lo, hi)); arenas: the flush's
 *       arena tensors; read(op, arenas): one operand read of any other kind. Returns None when an
 *       output is not one slice over the members' rows, else (outputs, operands, joined): one view
 *       per output; per operand the joined view or the list of the members' reads; per operand
 *       whether it was joined.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *str_outputs, *str_operands;

/* arenas[arena][lo:hi] */
static PyObject *
arena_rows(PyObject *arenas, PyObject *arena, PyObject *lo, PyObject *hi)
{
    Py_ssize_t a = PyLong_AsSsize_t(arena);
    if (a == -1 && PyErr_Occurred())
        return NULL;
    if (a < 0 || a >= PyList_GET_SIZE(arenas)) {
        PyErr_Format(PyExc_IndexError, "group_reads: arena %zd of %zd", a, PyList_GET_SIZE(arenas));
        return NULL;
    }
    PyObject *slice = PySlice_New(lo, hi, NULL);
    if (slice == NULL)
        return NULL;
    PyObject *view = PyObject_GetItem(PyList_GET_ITEM(arenas, a), slice);
    Py_DECREF(slice);
    return view;
}

/* 1 if the descriptor is a row slice (kind 0), 0 if not, -1 on error (not a 3-tuple). */
static int
is_slice(PyObject *op)
{
    if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) != 3) {
        PyErr_SetString(PyExc_TypeError, "group_reads: a read or write is (kind, arena, payload)");
        return -1;
    }
    PyObject *kind = PyTuple_GET_ITEM(op, 0);
    if (!PyLong_Check(kind))
        return 0;
    long k = PyLong_AsLong(kind);
    if (k == -1 && PyErr_Occurred())
        return -1;
    if (k != 0)
        return 0;
    PyObject *rows = PyTuple_GET_ITEM(op, 2);
    if (!PyTuple_Check(rows) || PyTuple_GET_SIZE(rows) != 2) {
        PyErr_SetString(PyExc_TypeError, "group_reads: a slice's rows are (lo, hi)");
        return -1;
    }
    return 1;
}

/* Item `at` of each member's list (`lists[i]`, borrowed) as one slice of one arena, each member's
 * rows right after the last's: 1 with *arena, *lo, *hi set (borrowed), 0 if not, -1 on error. */
static int
one_slice(PyObject **lists, Py_ssize_t n, Py_ssize_t at, PyObject **arena, PyObject **lo, PyObject **hi)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op = PyList_GET_ITEM(lists[i], at);
        int r = is_slice(op);
        if (r <= 0)
            return r;
        PyObject *a = PyTuple_GET_ITEM(op, 1), *rows = PyTuple_GET_ITEM(op, 2);
        if (i == 0) {
            *arena = a;
            *lo = PyTuple_GET_ITEM(rows, 0);
        } else {
            int same = PyObject_RichCompareBool(a, *arena, Py_EQ);
            if (same <= 0)
                return same;
            same = PyObject_RichCompareBool(PyTuple_GET_ITEM(rows, 0), *hi, Py_EQ);
            if (same <= 0)
                return same;
        }
        *hi = PyTuple_GET_ITEM(rows, 1);
    }
    return 1;
}

/* Each member's list attribute `name` (new references in lists[i]), all of one length: that length,
 * or -1 on error. */
static Py_ssize_t
member_lists(PyObject *members, Py_ssize_t n, PyObject *name, PyObject **lists)
{
    Py_ssize_t len = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        lists[i] = PyObject_GetAttr(PyList_GET_ITEM(members, i), name);
        if (lists[i] == NULL)
            return -1;
        if (!PyList_Check(lists[i])) {
            PyErr_Format(PyExc_TypeError, "group_reads: a step's %U is not a list", name);
            return -1;
        }
        if (i == 0)
            len = PyList_GET_SIZE(lists[i]);
        else if (PyList_GET_SIZE(lists[i]) != len) {
            PyErr_Format(PyExc_ValueError, "group_reads: twin steps with %zd and %zd %U", len,
                         PyList_GET_SIZE(lists[i]), name);
            return -1;
        }
    }
    return len;
}

static void
release(PyObject **lists, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(lists[i]);
}

static PyObject *
group_reads(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "group_reads(members: list, arenas: list, read)");
        return NULL;
    }
    PyObject *members = args[0], *arenas = args[1], *read = args[2];
    Py_ssize_t n = PyList_GET_SIZE(members);
    if (n == 0)
        Py_RETURN_NONE;
    PyObject **outs = PyMem_Calloc(2 * n, sizeof(PyObject *));
    if (outs == NULL)
        return PyErr_NoMemory();
    PyObject **opers = outs + n;
    PyObject *into = NULL, *operands = NULL, *joined = NULL, *result = NULL;
    PyObject *arena, *lo, *hi;
    Py_ssize_t num_out = member_lists(members, n, str_outputs, outs);
    if (num_out < 0)
        goto done;
    Py_ssize_t num_op = member_lists(members, n, str_operands, opers);
    if (num_op < 0)
        goto done;
    into = PyList_New(num_out);
    if (into == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < num_out; k++) {
        int r = one_slice(outs, n, k, &arena, &lo, &hi);
        if (r < 0)
            goto done;
        if (r == 0) {               /* an output the members do not write as one slice */
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        PyObject *view = arena_rows(arenas, arena, lo, hi);
        if (view == NULL)
            goto done;
        PyList_SET_ITEM(into, k, view);
    }
    operands = PyList_New(num_op);
    joined = PyTuple_New(num_op);
    if (operands == NULL || joined == NULL)
        goto done;
    for (Py_ssize_t p = 0; p < num_op; p++) {
        int r = one_slice(opers, n, p, &arena, &lo, &hi);
        if (r < 0)
            goto done;
        PyObject *value;
        if (r == 1) {
            value = arena_rows(arenas, arena, lo, hi);
        } else {
            value = PyList_New(n);
            for (Py_ssize_t i = 0; value != NULL && i < n; i++) {
                PyObject *op = PyList_GET_ITEM(opers[i], p);
                int s = is_slice(op);
                PyObject *one = NULL;
                if (s == 1) {
                    PyObject *rows = PyTuple_GET_ITEM(op, 2);
                    one = arena_rows(arenas, PyTuple_GET_ITEM(op, 1), PyTuple_GET_ITEM(rows, 0),
                                     PyTuple_GET_ITEM(rows, 1));
                } else if (s == 0) {
                    PyObject *call_args[2] = {op, arenas};
                    one = PyObject_Vectorcall(read, call_args, 2, NULL);
                }
                if (one == NULL) {
                    Py_CLEAR(value);
                    break;
                }
                PyList_SET_ITEM(value, i, one);
            }
        }
        if (value == NULL)
            goto done;
        PyList_SET_ITEM(operands, p, value);
        PyObject *flag = r == 1 ? Py_True : Py_False;
        Py_INCREF(flag);
        PyTuple_SET_ITEM(joined, p, flag);
    }
    result = PyTuple_Pack(3, into, operands, joined);
done:
    release(outs, 2 * n);
    PyMem_Free(outs);
    Py_XDECREF(into);
    Py_XDECREF(operands);
    Py_XDECREF(joined);
    return result;
}

static PyMethodDef groups_methods[] = {
    {"group_reads", (PyCFunction)(void (*)(void))group_reads, METH_FASTCALL,
     "NOTE: [Native group reads]: (outputs, operands, joined) of a run of twin batches, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef groups_module = {
    PyModuleDef_HEAD_INIT, "phalanx.runtime._groups", "Native group-run reads (NOTE: [Native group reads]).", -1,
    groups_methods,
};

PyMODINIT_FUNC
PyInit__groups(void)
{
    str_outputs = PyUnicode_InternFromString("outputs");
    str_operands = PyUnicode_InternFromString("operands");
    if (str_outputs == NULL || str_operands == NULL)
        return NULL;
    return PyModule_Create(&groups_module);
}
