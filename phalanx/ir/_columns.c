/* phalanx.ir._columns: the recording hot path in C.
 *
 * NOTE: [Native columns] recording one cell call is a handful of list appends and one small object
 * per output, but in Python each of those costs an interpreter dispatch, so a call cost ~3 us
 * (issue 8: the runtime, not the kernels, decided speed on small hidden sizes). This module holds
 * the same two things ir/columns.py defines in Python, with the same behaviour:
 *
 *   ValueBase  the storage of a lazy value (vid, aval, depth, graph); frontend/value.py's
 *              LazyValue subclasses it and adds every method.
 *   Columns    the append-only node columns of a DataflowGraph (ir/graph.py subclasses it), with
 *              append_call(cell, args): record a call of a cell whose op type the recorder has
 *              already resolved for this graph (fast_calls[cell] = (sid, pattern, out_avals, single)).
 *              It returns NotImplemented, having changed nothing, whenever anything differs from
 *              that pattern (a lazy value of another aval or graph, a number of another type,
 *              anything else): the Python recorder then takes the call.
 *
 * The pattern holds, per argument, the AVal object a lazy argument must have (identity: avals are
 * interned) or INT_KEY / FLOAT_KEY for a Python int / float, which becomes an immediate operand.
 * Depth (NOTE: [Inline depth]) is 1 + the deepest lazy argument, at least phase_base.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static PyTypeObject *value_type = NULL;   /* LazyValue, registered by set_value_type */
static PyObject *int_key = NULL;
static PyObject *float_key = NULL;

/* *** ValueBase *** */

typedef struct {
    PyObject_HEAD
    PyObject *vid;
    PyObject *aval;
    Py_ssize_t depth;
    PyObject *graph;
} ValueBase;

static PyObject *
value_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"vid", "aval", "depth", "graph", NULL};
    PyObject *vid, *aval, *graph;
    Py_ssize_t depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOnO:ValueBase", names, &vid, &aval, &depth, &graph))
        return NULL;
    ValueBase *self = (ValueBase *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    Py_INCREF(vid);
    self->vid = vid;
    Py_INCREF(aval);
    self->aval = aval;
    self->depth = depth;
    Py_INCREF(graph);
    self->graph = graph;
    return (PyObject *)self;
}

static int
value_traverse(ValueBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->vid);
    Py_VISIT(self->aval);
    Py_VISIT(self->graph);
    return 0;
}

static int
value_clear(ValueBase *self)
{
    Py_CLEAR(self->vid);
    Py_CLEAR(self->aval);
    Py_CLEAR(self->graph);
    return 0;
}

static void
value_dealloc(ValueBase *self)
{
    PyObject_GC_UnTrack(self);
    value_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef value_members[] = {
    {"vid", T_OBJECT_EX, offsetof(ValueBase, vid), READONLY, "id of the value in its graph"},
    {"aval", T_OBJECT_EX, offsetof(ValueBase, aval), READONLY, "per-instance shape and dtype"},
    {"depth", T_PYSSIZET, offsetof(ValueBase, depth), READONLY, "depth of the producing node"},
    {"graph", T_OBJECT_EX, offsetof(ValueBase, graph), READONLY, "the DataflowGraph it belongs to"},
    {NULL},
};

static PyTypeObject ValueBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.ValueBase",
    .tp_doc = "Storage of a lazy value: vid, aval, depth, graph (ir/_columns.c).",
    .tp_basicsize = sizeof(ValueBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = value_new,
    .tp_dealloc = (destructor)value_dealloc,
    .tp_traverse = (traverseproc)value_traverse,
    .tp_clear = (inquiry)value_clear,
    .tp_members = value_members,
};

static PyObject *
make_value(Py_ssize_t vid, PyObject *aval, Py_ssize_t depth, PyObject *graph)
{
    ValueBase *v = (ValueBase *)value_type->tp_alloc(value_type, 0);
    if (v == NULL)
        return NULL;
    v->vid = PyLong_FromSsize_t(vid);
    if (v->vid == NULL) {
        Py_DECREF(v);
        return NULL;
    }
    Py_INCREF(aval);
    v->aval = aval;
    v->depth = depth;
    Py_INCREF(graph);
    v->graph = graph;
    return (PyObject *)v;
}

/* *** Columns *** */

typedef struct {
    PyObject_HEAD
    PyObject *node_sig;     /* list[int]: op type id per node */
    PyObject *node_depth;   /* list[int] */
    PyObject *arg_start;    /* list[int]: CSR starts into arg_code, one more than nodes */
    PyObject *arg_code;     /* list[int]: value id (>= 0) or -1 - immediate index */
    PyObject *imms;         /* list: immediates (numbers, tensors) */
    PyObject *fast_calls;   /* dict: cell -> (sid, pattern, out_avals, single) */
    Py_ssize_t num_values;
    Py_ssize_t phase_base;
} Columns;

static PyObject *
columns_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* Arguments belong to the subclass's __init__ (DataflowGraph(table, device)). */
    Columns *self = (Columns *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->node_sig = PyList_New(0);
    self->node_depth = PyList_New(0);
    self->arg_start = PyList_New(0);
    self->arg_code = PyList_New(0);
    self->imms = PyList_New(0);
    self->fast_calls = PyDict_New();
    if (!self->node_sig || !self->node_depth || !self->arg_start || !self->arg_code || !self->imms
            || !self->fast_calls) {
        Py_DECREF(self);
        return NULL;
    }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL || PyList_Append(self->arg_start, zero) < 0) {
        Py_XDECREF(zero);
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(zero);
    return (PyObject *)self;
}

static int
columns_traverse(Columns *self, visitproc visit, void *arg)
{
    Py_VISIT(self->node_sig);
    Py_VISIT(self->node_depth);
    Py_VISIT(self->arg_start);
    Py_VISIT(self->arg_code);
    Py_VISIT(self->imms);
    Py_VISIT(self->fast_calls);
    return 0;
}

static int
columns_clear(Columns *self)
{
    Py_CLEAR(self->node_sig);
    Py_CLEAR(self->node_depth);
    Py_CLEAR(self->arg_start);
    Py_CLEAR(self->arg_code);
    Py_CLEAR(self->imms);
    Py_CLEAR(self->fast_calls);
    return 0;
}

static void
columns_dealloc(Columns *self)
{
    PyObject_GC_UnTrack(self);
    columns_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
append_new_int(PyObject *list, Py_ssize_t x)
{
    PyObject *o = PyLong_FromSsize_t(x);
    if (o == NULL)
        return -1;
    int r = PyList_Append(list, o);
    Py_DECREF(o);
    return r;
}

/* Remove what a failed append_call added (only after a memory error). */
static void
truncate_list(PyObject *list, Py_ssize_t n)
{
    PyObject *err_type, *err_value, *err_tb;
    PyErr_Fetch(&err_type, &err_value, &err_tb);
    if (PyList_GET_SIZE(list) > n)
        PyList_SetSlice(list, n, PyList_GET_SIZE(list), NULL);
    PyErr_Restore(err_type, err_value, err_tb);
}

/* Record cell(*args) (n arguments) if fast_calls knows the cell and the arguments match its pattern;
 * else NotImplemented with nothing changed. */
static PyObject *
append_call_impl(Columns *self, PyObject *cell, PyObject *const *args, Py_ssize_t n)
{
    if (value_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "phalanx.ir._columns: set_value_type was not called");
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(self->fast_calls, cell);   /* borrowed */
    if (entry == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *pattern = PyTuple_GET_ITEM(entry, 1);
    if (n != PyTuple_GET_SIZE(pattern))
        Py_RETURN_NOTIMPLEMENTED;
    /* First pass: check every argument, changing nothing. */
    Py_ssize_t depth = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = args[i];
        PyObject *p = PyTuple_GET_ITEM(pattern, i);
        if (Py_TYPE(a) == value_type) {
            ValueBase *v = (ValueBase *)a;
            if (v->aval != p || v->graph != (PyObject *)self)
                Py_RETURN_NOTIMPLEMENTED;
            if (v->depth >= depth)
                depth = v->depth + 1;
        } else if (PyLong_CheckExact(a)) {
            if (p != int_key)
                Py_RETURN_NOTIMPLEMENTED;
        } else if (PyFloat_CheckExact(a)) {
            if (p != float_key)
                Py_RETURN_NOTIMPLEMENTED;
        } else {
            Py_RETURN_NOTIMPLEMENTED;
        }
    }
    /* Second pass: append. */
    Py_ssize_t code_mark = PyList_GET_SIZE(self->arg_code), imm_mark = PyList_GET_SIZE(self->imms);
    Py_ssize_t node_mark = PyList_GET_SIZE(self->node_sig);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = args[i];
        if (Py_TYPE(a) == value_type) {
            if (PyList_Append(self->arg_code, ((ValueBase *)a)->vid) < 0)
                goto fail;
        } else {
            if (append_new_int(self->arg_code, -1 - PyList_GET_SIZE(self->imms)) < 0
                    || PyList_Append(self->imms, a) < 0)
                goto fail;
        }
    }
    if (depth < self->phase_base)
        depth = self->phase_base;
    if (PyList_Append(self->node_sig, PyTuple_GET_ITEM(entry, 0)) < 0
            || append_new_int(self->node_depth, depth) < 0
            || append_new_int(self->arg_start, PyList_GET_SIZE(self->arg_code)) < 0)
        goto fail;
    PyObject *out_avals = PyTuple_GET_ITEM(entry, 2);
    Py_ssize_t nout = PyTuple_GET_SIZE(out_avals), first = self->num_values;
    PyObject *result;
    if (PyTuple_GET_ITEM(entry, 3) == Py_True) {
        result = make_value(first, PyTuple_GET_ITEM(out_avals, 0), depth, (PyObject *)self);
    } else {
        result = PyTuple_New(nout);
        for (Py_ssize_t k = 0; result != NULL && k < nout; k++) {
            PyObject *v = make_value(first + k, PyTuple_GET_ITEM(out_avals, k), depth, (PyObject *)self);
            if (v == NULL)
                Py_CLEAR(result);
            else
                PyTuple_SET_ITEM(result, k, v);
        }
    }
    if (result == NULL)
        goto fail;
    self->num_values = first + nout;
    return result;
fail:
    truncate_list(self->arg_code, code_mark);
    truncate_list(self->imms, imm_mark);
    truncate_list(self->node_sig, node_mark);
    truncate_list(self->node_depth, node_mark);
    truncate_list(self->arg_start, node_mark + 1);
    return NULL;
}

static PyObject *
columns_append_call(Columns *self, PyObject *const *argv, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "append_call(cell, args: tuple)");
        return NULL;
    }
    return append_call_impl(self, argv[0], ((PyTupleObject *)argv[1])->ob_item, PyTuple_GET_SIZE(argv[1]));
}

static PyMethodDef columns_methods[] = {
    {"append_call", (PyCFunction)(void (*)(void))columns_append_call, METH_FASTCALL,
     "append_call(cell, args) -> the call's lazy outputs, or NotImplemented (nothing recorded)"},
    {NULL},
};

static PyMemberDef columns_members[] = {
    {"node_sig", T_OBJECT_EX, offsetof(Columns, node_sig), READONLY, NULL},
    {"node_depth", T_OBJECT_EX, offsetof(Columns, node_depth), READONLY, NULL},
    {"arg_start", T_OBJECT_EX, offsetof(Columns, arg_start), READONLY, NULL},
    {"arg_code", T_OBJECT_EX, offsetof(Columns, arg_code), READONLY, NULL},
    {"imms", T_OBJECT_EX, offsetof(Columns, imms), READONLY, NULL},
    {"fast_calls", T_OBJECT_EX, offsetof(Columns, fast_calls), READONLY, NULL},
    {"num_values", T_PYSSIZET, offsetof(Columns, num_values), 0, NULL},
    {"phase_base", T_PYSSIZET, offsetof(Columns, phase_base), 0, NULL},
    {NULL},
};

static PyTypeObject ColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.Columns",
    .tp_doc = "Append-only node columns of a DataflowGraph with a native append_call (ir/_columns.c).",
    .tp_basicsize = sizeof(Columns),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = columns_new,
    .tp_dealloc = (destructor)columns_dealloc,
    .tp_traverse = (traverseproc)columns_traverse,
    .tp_clear = (inquiry)columns_clear,
    .tp_methods = columns_methods,
    .tp_members = columns_members,
};


/* *** CellCall: a cell class's __call__ ***
 *
 * Calling a cell through a Python __call__ costs a frame, *args packing and the recorder lookup,
 * about twice what recording the call costs natively. A CellCall is a method descriptor (the
 * interpreter calls it with the cell prepended, without binding) that reads the thread's active
 * recorder (slot.rec) and records through Columns.append_call directly; anything else (no active
 * recorder: an eager call; keyword arguments; a call the fast path declines) goes to ``fallback``,
 * the Python __call__ with the same signature (frontend/cell.py).
 */

typedef struct {
    PyObject_HEAD
    PyObject *slot;        /* the recorder slot (a threading.local with .rec) */
    PyObject *fallback;    /* fallback(cell, *args, **kwargs) */
    vectorcallfunc vectorcall;
} CellCall;

static PyObject *str_rec, *str_graph;

static PyObject *
cellcall_vectorcall(CellCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs >= 1 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
        PyObject *rec = PyObject_GetAttr(self->slot, str_rec);
        if (rec == NULL)
            return NULL;
        if (rec != Py_None) {
            PyObject *graph = PyObject_GetAttr(rec, str_graph);
            Py_DECREF(rec);
            if (graph == NULL)
                return NULL;
            PyObject *out = NULL;
            if (PyObject_TypeCheck(graph, &ColumnsType))
                out = append_call_impl((Columns *)graph, args[0], args + 1, nargs - 1);
            else
                out = Py_NewRef(Py_NotImplemented);
            Py_DECREF(graph);
            if (out != Py_NotImplemented)
                return out;           /* the outputs, or NULL with an error set */
            Py_DECREF(out);
        } else {
            Py_DECREF(rec);
        }
    }
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
cellcall_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"slot", "fallback", NULL};
    PyObject *slot, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:CellCall", names, &slot, &fallback))
        return NULL;
    CellCall *self = (CellCall *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->slot = Py_NewRef(slot);
    self->fallback = Py_NewRef(fallback);
    self->vectorcall = (vectorcallfunc)cellcall_vectorcall;
    return (PyObject *)self;
}

static PyObject *
cellcall_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

static int
cellcall_traverse(CellCall *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slot);
    Py_VISIT(self->fallback);
    return 0;
}

static int
cellcall_clear(CellCall *self)
{
    Py_CLEAR(self->slot);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
cellcall_dealloc(CellCall *self)
{
    PyObject_GC_UnTrack(self);
    cellcall_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef cellcall_members[] = {
    {"fallback", T_OBJECT_EX, offsetof(CellCall, fallback), READONLY, "the Python __call__ it defers to"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(CellCall, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject CellCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.CellCall",
    .tp_doc = "A cell class's __call__ that records through the native fast path (ir/_columns.c).",
    .tp_basicsize = sizeof(CellCall),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_METHOD_DESCRIPTOR | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = cellcall_new,
    .tp_dealloc = (destructor)cellcall_dealloc,
    .tp_traverse = (traverseproc)cellcall_traverse,
    .tp_clear = (inquiry)cellcall_clear,
    .tp_members = cellcall_members,
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = cellcall_descr_get,
    .tp_vectorcall_offset = offsetof(CellCall, vectorcall),
};

/* *** module *** */

static PyObject *
set_value_type(PyObject *module, PyObject *type)
{
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &ValueBaseType)) {
        PyErr_SetString(PyExc_TypeError, "set_value_type expects a subclass of ValueBase");
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(value_type, (PyTypeObject *)type);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"set_value_type", set_value_type, METH_O, "the ValueBase subclass append_call creates"},
    {NULL},
};

static struct PyModuleDef columns_module = {
    PyModuleDef_HEAD_INIT, "phalanx.ir._columns", "Native recording columns (NOTE: [Native columns]).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__columns(void)
{
    if (PyType_Ready(&ValueBaseType) < 0 || PyType_Ready(&ColumnsType) < 0 || PyType_Ready(&CellCallType) < 0)
        return NULL;
    str_rec = PyUnicode_InternFromString("rec");
    str_graph = PyUnicode_InternFromString("graph");
    if (str_rec == NULL || str_graph == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&columns_module);
    if (m == NULL)
        return NULL;
    /* Plain sentinels: they can equal nothing but themselves in a signature key. */
    int_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    float_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    Py_INCREF(&ValueBaseType);
    Py_INCREF(&ColumnsType);
    if (int_key == NULL || float_key == NULL
            || PyModule_AddObject(m, "ValueBase", (PyObject *)&ValueBaseType) < 0
            || PyModule_AddObject(m, "Columns", (PyObject *)&ColumnsType) < 0
            || PyModule_AddObjectRef(m, "CellCall", (PyObject *)&CellCallType) < 0
            || PyModule_AddObjectRef(m, "INT_KEY", int_key) < 0
            || PyModule_AddObjectRef(m, "FLOAT_KEY", float_key) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
