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
 *              already resolved for this graph (fast_calls[cell] = (sid, pattern, out_avals, single,
 *              split, next): a chain of the cell's op types, tried in turn, append_call_impl).
 *              It returns NotImplemented, having changed nothing, whenever anything differs from
 *              that pattern (a lazy value of another aval or graph, a number of another type,
 *              anything else): the Python recorder then takes the call.
 *
 * The pattern holds, per argument, the AVal object a lazy argument must have (identity: avals are
 * interned), INT_KEY / FLOAT_KEY for a Python int / float, or (TENSOR_KEY, aval) for a per-instance
 * tensor operand: a plain torch.Tensor of that aval, or a lazy value of that aval recorded by an
 * earlier fiber round of the same run (a *stale* value: its graph's ``run`` is this graph's, and
 * not None). Numbers, tensors and stale values become immediates; the fibers hub turns each stale
 * one into its concrete row when this graph is flushed (NOTE: [Values across rounds]).
 * Depth (NOTE: [Inline depth]) is 1 + the deepest lazy argument of this graph, at least phase_base.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static PyTypeObject *value_type = NULL;   /* LazyValue, registered by set_value_type */
static PyTypeObject *tensor_type = NULL;  /* torch.Tensor (exactly), registered by set_value_type */
static PyObject *int_key = NULL;
static PyObject *float_key = NULL;
static PyObject *tensor_key = NULL;
static PyObject *str_shape, *str_dtype;

/* *** ValueBase *** */

typedef struct {
    PyObject_HEAD
    Py_ssize_t vid;
    PyObject *aval;
    Py_ssize_t depth;
    PyObject *graph;
} ValueBase;

static PyObject *
value_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"vid", "aval", "depth", "graph", NULL};
    PyObject *aval, *graph;
    Py_ssize_t vid, depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOnO:ValueBase", names, &vid, &aval, &depth, &graph))
        return NULL;
    ValueBase *self = (ValueBase *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
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
    Py_VISIT(self->aval);
    Py_VISIT(self->graph);
    return 0;
}

static int
value_clear(ValueBase *self)
{
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
    {"vid", T_PYSSIZET, offsetof(ValueBase, vid), READONLY, "id of the value in its graph"},
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

/* NOTE: [Value freelist] a recording allocates and frees about two lazy values per node, and for a
 * Python subclass (LazyValue) each went through PyType_GenericAlloc and subtype_dealloc: ~380
 * instructions per value (callgrind, TreeLSTM), more than recording the node's columns. The
 * registered value class (set_value_type) gets value_class_dealloc instead of subtype_dealloc when
 * it adds nothing to ValueBase's layout (no __dict__, __weakref__, __del__: LazyValue has
 * ``__slots__ = ()``), and its freed objects are kept on a bounded freelist that make_value reuses.
 * What a value is and holds does not change; only where its memory comes from. */
#define VALUE_FREELIST_SIZE 2048
static PyObject *value_freelist[VALUE_FREELIST_SIZE];
static int value_free_count = 0;
static int value_type_pooled = 0;     /* value_type's instances use value_class_dealloc and the freelist */

static void
value_class_dealloc(ValueBase *self)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->aval);
    Py_CLEAR(self->graph);
    if (type == value_type && value_type_pooled && value_free_count < VALUE_FREELIST_SIZE)
        value_freelist[value_free_count++] = (PyObject *)self;
    else
        type->tp_free((PyObject *)self);
    Py_DECREF(type);          /* instances of a heap type hold a reference to it */
}

static void
clear_value_freelist(void)
{
    while (value_free_count > 0)
        PyObject_GC_Del(value_freelist[--value_free_count]);
}

static PyObject *
make_value(Py_ssize_t vid, PyObject *aval, Py_ssize_t depth, PyObject *graph)
{
    ValueBase *v;
    if (value_free_count > 0) {
        v = (ValueBase *)value_freelist[--value_free_count];
        PyObject_Init((PyObject *)v, value_type);     /* reference count 1, a reference to the type */
    } else {
        v = (ValueBase *)value_type->tp_alloc(value_type, 0);
        if (v == NULL)
            return NULL;
        PyObject_GC_UnTrack(v);
    }
    v->vid = vid;
    Py_INCREF(aval);
    v->aval = aval;
    v->depth = depth;
    Py_INCREF(graph);
    v->graph = graph;
    PyObject_GC_Track(v);
    return (PyObject *)v;
}


/* *** RaggedBase: the storage of a ragged stack (frontend/ragged.py's RaggedStack) ***
 *
 * NOTE: [Native ragged stacks] ``torch.stack(xs)`` of k lazy values of one aval records nothing: it
 * is a RaggedStack of the k members (NOTE: [Ragged operands] in frontend/ragged.py), and the cell
 * that reads it records ONE node whose operands are the fixed arguments, then every member. On
 * the Lattice-GRU that pair (a stack, then a cell) is each character's recording, and in Python it
 * took four frames for the stack (__torch_function__, record_op, try_stack, __init__) and five for
 * the cell (the Python __call__, record_cell, record_known_call...). Here ``stack_values(xs)``
 * makes the stack (one pass over the members) and append_call records the cell call, when its
 * fast entry's pattern holds (RAGGED_KEY, element) for a stacked argument: such a stack, of this
 * graph, of that element aval, all stacks of the call of one length.
 */

static PyTypeObject *ragged_type = NULL;  /* RaggedStack, registered by set_ragged_type */
static PyObject *ragged_key = NULL;

typedef struct {
    PyObject_HEAD
    PyObject *members;      /* tuple of lazy values of this graph */
    PyObject *element;      /* their aval */
    PyObject *graph;
    Py_ssize_t top;         /* 1 + the deepest member's depth (0 without members) */
    PyObject *stacked;      /* the materialized stacked value, or NULL */
} RaggedBase;

static Py_ssize_t
members_top(PyObject *members)
{
    Py_ssize_t top = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(members); i++) {
        PyObject *m = PyTuple_GET_ITEM(members, i);
        if (!PyObject_TypeCheck(m, &ValueBaseType)) {
            PyErr_Format(PyExc_TypeError, "a ragged stack's members are lazy values, got %R", m);
            return -1;
        }
        if (((ValueBase *)m)->depth >= top)
            top = ((ValueBase *)m)->depth + 1;
    }
    return top;
}

static PyObject *
ragged_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    /* vids is accepted as the Python twin's constructor does, and ignored: read from the members */
    static char *names[] = {"members", "element", "graph", "vids", "top", NULL};
    PyObject *members, *element, *graph, *vids = Py_None;
    Py_ssize_t top = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO|On:RaggedBase", names, &PyTuple_Type, &members, &element,
                                     &graph, &vids, &top))
        return NULL;
    if (top < 0 && (top = members_top(members)) < 0)
        return NULL;
    RaggedBase *self = (RaggedBase *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->members = Py_NewRef(members);
    self->element = Py_NewRef(element);
    self->graph = Py_NewRef(graph);
    self->top = top;
    return (PyObject *)self;
}

static int
ragged_traverse(RaggedBase *self, visitproc visit, void *arg)
{
    Py_VISIT(self->members);
    Py_VISIT(self->element);
    Py_VISIT(self->graph);
    Py_VISIT(self->stacked);
    return 0;
}

static int
ragged_clear(RaggedBase *self)
{
    Py_CLEAR(self->members);
    Py_CLEAR(self->element);
    Py_CLEAR(self->graph);
    Py_CLEAR(self->stacked);
    return 0;
}

static void
ragged_dealloc(RaggedBase *self)
{
    /* a subclass's subtype_dealloc calls this, and releases the type itself */
    PyObject_GC_UnTrack(self);
    ragged_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
ragged_get_vids(RaggedBase *self, void *closure)
{
    Py_ssize_t n = PyTuple_GET_SIZE(self->members);
    PyObject *vids = PyList_New(n);
    for (Py_ssize_t i = 0; vids != NULL && i < n; i++) {
        PyObject *vid = PyLong_FromSsize_t(((ValueBase *)PyTuple_GET_ITEM(self->members, i))->vid);
        if (vid == NULL)
            Py_CLEAR(vids);
        else
            PyList_SET_ITEM(vids, i, vid);
    }
    return vids;
}

static PyGetSetDef ragged_getset[] = {
    {"vids", (getter)ragged_get_vids, NULL, "the members' value ids (a new list)", NULL},
    {NULL},
};

static PyMemberDef ragged_members[] = {
    {"members", T_OBJECT_EX, offsetof(RaggedBase, members), READONLY, "the stacked lazy values"},
    {"element", T_OBJECT_EX, offsetof(RaggedBase, element), READONLY, "the members' aval"},
    {"graph", T_OBJECT_EX, offsetof(RaggedBase, graph), READONLY, "the DataflowGraph of the members"},
    {"top", T_PYSSIZET, offsetof(RaggedBase, top), READONLY, "1 + the deepest member's depth"},
    {"_stacked", T_OBJECT, offsetof(RaggedBase, stacked), 0, "the materialized stacked value, or None"},
    {NULL},
};

static PyTypeObject RaggedBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.RaggedBase",
    .tp_doc = "Storage of a ragged stack: members, element, graph, top (ir/_columns.c).",
    .tp_basicsize = sizeof(RaggedBase),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = ragged_new,
    .tp_dealloc = (destructor)ragged_dealloc,
    .tp_traverse = (traverseproc)ragged_traverse,
    .tp_clear = (inquiry)ragged_clear,
    .tp_members = ragged_members,
    .tp_getset = ragged_getset,
};

/* *** IntColumn: a growable int64 column (list-like, plus the buffer protocol) ***
 *
 * The graph's columns are appended to once per node and turned into numpy arrays once per flush.
 * As Python lists of ints the conversion cost ~0.3 us per node; as int64 buffers numpy copies
 * them with one memcpy. The Python twin is array.array('q'), which behaves the same.
 */

typedef struct {
    PyObject_HEAD
    long long *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    Py_ssize_t exports;     /* buffers handed out: no resizing while any is alive */
} IntColumn;

static PyTypeObject IntColumnType;

static int
column_reserve(IntColumn *self, Py_ssize_t need)
{
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "an IntColumn cannot change size while its buffer is exported");
        return -1;
    }
    if (need <= self->cap)
        return 0;
    Py_ssize_t cap = self->cap < 16 ? 16 : self->cap;
    while (cap < need)
        cap += cap >> 1;
    long long *data = PyMem_Realloc(self->data, (size_t)cap * sizeof(long long));
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->data = data;
    self->cap = cap;
    return 0;
}

static inline int
column_push(IntColumn *self, long long x)
{
    if ((self->len == self->cap || self->exports > 0) && column_reserve(self, self->len + 1) < 0)
        return -1;
    self->data[self->len++] = x;
    return 0;
}

static PyObject *column_extend(IntColumn *self, PyObject *items);

static IntColumn *
column_create(void)
{
    return (IntColumn *)IntColumnType.tp_alloc(&IntColumnType, 0);
}

static PyObject *
column_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *items = NULL;
    if (!PyArg_ParseTuple(args, "|O:IntColumn", &items))
        return NULL;
    IntColumn *self = (IntColumn *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (items != NULL) {
        PyObject *r = column_extend(self, items);
        if (r == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        Py_DECREF(r);
    }
    return (PyObject *)self;
}

static void
column_dealloc(IntColumn *self)
{
    PyMem_Free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
column_append(IntColumn *self, PyObject *x)
{
    long long v = PyLong_AsLongLong(x);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    if (column_push(self, v) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
column_extend(IntColumn *self, PyObject *items)
{
    PyObject *it = PyObject_GetIter(items);
    if (it == NULL)
        return NULL;
    Py_ssize_t mark = self->len;
    PyObject *x;
    while ((x = PyIter_Next(it)) != NULL) {
        long long v = PyLong_AsLongLong(x);
        Py_DECREF(x);
        if ((v == -1 && PyErr_Occurred()) || column_push(self, v) < 0) {
            self->len = mark;
            Py_DECREF(it);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        self->len = mark;
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
column_tolist(IntColumn *self, PyObject *unused)
{
    PyObject *list = PyList_New(self->len);
    for (Py_ssize_t i = 0; list != NULL && i < self->len; i++) {
        PyObject *v = PyLong_FromLongLong(self->data[i]);
        if (v == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static Py_ssize_t
column_length(IntColumn *self)
{
    return self->len;
}

static PyObject *
column_item(IntColumn *self, Py_ssize_t i)
{
    if (i < 0 || i >= self->len) {
        PyErr_SetString(PyExc_IndexError, "IntColumn index out of range");
        return NULL;
    }
    return PyLong_FromLongLong(self->data[i]);
}

static PyObject *
column_subscript(IntColumn *self, PyObject *key)
{
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return NULL;
        if (i < 0)
            i += self->len;
        return column_item(self, i);
    }
    if (PySlice_Check(key)) {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0)
            return NULL;
        Py_ssize_t n = PySlice_AdjustIndices(self->len, &start, &stop, step);
        PyObject *list = PyList_New(n);
        for (Py_ssize_t k = 0; list != NULL && k < n; k++) {
            PyObject *v = PyLong_FromLongLong(self->data[start + k * step]);
            if (v == NULL)
                Py_CLEAR(list);
            else
                PyList_SET_ITEM(list, k, v);
        }
        return list;
    }
    PyErr_Format(PyExc_TypeError, "IntColumn indices must be integers or slices, not %.200s", Py_TYPE(key)->tp_name);
    return NULL;
}

static int
column_ass_subscript(IntColumn *self, PyObject *key, PyObject *value)
{
    if (value == NULL && PySlice_Check(key)) {
        /* del column[a:b] (step 1): what the recorder does to undo a half-recorded call */
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(key, &start, &stop, &step) < 0)
            return -1;
        Py_ssize_t n = PySlice_AdjustIndices(self->len, &start, &stop, step);
        if (n == 0)
            return 0;
        if (step != 1) {
            PyErr_SetString(PyExc_ValueError, "IntColumn: only contiguous slices can be deleted");
            return -1;
        }
        if (self->exports > 0) {
            PyErr_SetString(PyExc_BufferError, "an IntColumn cannot shrink while its buffer is exported");
            return -1;
        }
        memmove(self->data + start, self->data + stop, (size_t)(self->len - stop) * sizeof(long long));
        self->len -= n;
        return 0;
    }
    if (value != NULL && PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred())
            return -1;
        if (i < 0)
            i += self->len;
        if (i < 0 || i >= self->len) {
            PyErr_SetString(PyExc_IndexError, "IntColumn assignment index out of range");
            return -1;
        }
        long long v = PyLong_AsLongLong(value);
        if (v == -1 && PyErr_Occurred())
            return -1;
        self->data[i] = v;
        return 0;
    }
    PyErr_SetString(PyExc_TypeError, "IntColumn supports item assignment and deleting a slice");
    return -1;
}

static int
column_getbuffer(IntColumn *self, Py_buffer *view, int flags)
{
    static char format[] = "q";
    if (flags & PyBUF_WRITABLE) {
        PyErr_SetString(PyExc_BufferError, "an IntColumn's buffer is read-only");
        view->obj = NULL;
        return -1;
    }
    view->buf = self->data;
    view->obj = Py_NewRef(self);
    view->len = self->len * (Py_ssize_t)sizeof(long long);
    view->readonly = 1;
    view->itemsize = sizeof(long long);
    view->format = (flags & PyBUF_FORMAT) ? format : NULL;
    view->ndim = 1;
    view->shape = (flags & PyBUF_ND) ? &self->len : NULL;    /* stable: no resizing while exported */
    view->strides = (flags & PyBUF_STRIDES) ? &view->itemsize : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    self->exports++;
    return 0;
}

static void
column_releasebuffer(IntColumn *self, Py_buffer *view)
{
    self->exports--;
}

static PyObject *
column_repr(IntColumn *self)
{
    PyObject *list = column_tolist(self, NULL);
    if (list == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("IntColumn(%R)", list);
    Py_DECREF(list);
    return r;
}

static PyMethodDef column_methods[] = {
    {"append", (PyCFunction)column_append, METH_O, NULL},
    {"extend", (PyCFunction)column_extend, METH_O, NULL},
    {"tolist", (PyCFunction)column_tolist, METH_NOARGS, NULL},
    {NULL},
};

static PySequenceMethods column_as_sequence = {
    .sq_length = (lenfunc)column_length,
    .sq_item = (ssizeargfunc)column_item,
};

static PyMappingMethods column_as_mapping = {
    .mp_length = (lenfunc)column_length,
    .mp_subscript = (binaryfunc)column_subscript,
    .mp_ass_subscript = (objobjargproc)column_ass_subscript,
};

static PyBufferProcs column_as_buffer = {
    .bf_getbuffer = (getbufferproc)column_getbuffer,
    .bf_releasebuffer = (releasebufferproc)column_releasebuffer,
};

static PyTypeObject IntColumnType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.IntColumn",
    .tp_doc = "A growable int64 column: append, extend, len, indexing, del of a slice, buffer protocol.",
    .tp_basicsize = sizeof(IntColumn),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = column_new,
    .tp_dealloc = (destructor)column_dealloc,
    .tp_methods = column_methods,
    .tp_as_sequence = &column_as_sequence,
    .tp_as_mapping = &column_as_mapping,
    .tp_as_buffer = &column_as_buffer,
    .tp_repr = (reprfunc)column_repr,
};

/* *** Columns *** */

typedef struct {
    PyObject_HEAD
    IntColumn *node_sig;    /* op type id per node */
    IntColumn *node_depth;
    IntColumn *arg_start;   /* CSR starts into arg_code, one more than nodes */
    IntColumn *arg_code;    /* value id (>= 0) or -1 - immediate index */
    PyObject *imms;         /* list: immediates (numbers, tensors) */
    PyObject *fast_calls;   /* dict: cell -> (sid, pattern, out_avals, single) */
    PyObject *run;          /* the fibers run recording this graph (a token), or None */
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
    self->node_sig = column_create();
    self->node_depth = column_create();
    self->arg_start = column_create();
    self->arg_code = column_create();
    self->imms = PyList_New(0);
    self->fast_calls = PyDict_New();
    self->run = Py_NewRef(Py_None);
    if (!self->node_sig || !self->node_depth || !self->arg_start || !self->arg_code || !self->imms
            || !self->fast_calls) {
        Py_DECREF(self);
        return NULL;
    }
    if (column_push(self->arg_start, 0) < 0) {
        Py_DECREF(self);
        return NULL;
    }
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
    Py_VISIT(self->run);
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
    Py_CLEAR(self->run);
    return 0;
}

static void
columns_dealloc(Columns *self)
{
    PyObject_GC_UnTrack(self);
    columns_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Remove what a failed append_call added (only after a memory error). */
static void
truncate_imms(PyObject *list, Py_ssize_t n)
{
    PyObject *err_type, *err_value, *err_tb;
    PyErr_Fetch(&err_type, &err_value, &err_tb);
    if (PyList_GET_SIZE(list) > n)
        PyList_SetSlice(list, n, PyList_GET_SIZE(list), NULL);
    PyErr_Restore(err_type, err_value, err_tb);
}

/* A lazy value of this graph (not a stale one of an earlier round). */
static inline int
is_own_value(Columns *self, PyObject *a)
{
    return Py_TYPE(a) == value_type && ((ValueBase *)a)->graph == (PyObject *)self;
}

/* A lazy value of an earlier round of the same fibers run (NOTE: [Values across rounds]). */
static inline int
is_stale_value(Columns *self, ValueBase *v)
{
    return self->run != Py_None && v->graph != (PyObject *)self && PyObject_TypeCheck(v->graph, Py_TYPE(self))
        && ((Columns *)v->graph)->run == self->run;
}

/* Does tensor t have this aval (shape and dtype)? 1, 0, or -1 with an error set. */
static int
tensor_has_aval(PyObject *t, PyObject *aval)
{
    PyObject *dtype = PyObject_GetAttr(t, str_dtype), *want = PyObject_GetAttr(aval, str_dtype);
    int same = dtype != NULL && want != NULL && dtype == want;
    Py_XDECREF(dtype);
    Py_XDECREF(want);
    if (!same)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *shape = PyObject_GetAttr(t, str_shape), *want_shape = PyObject_GetAttr(aval, str_shape);
    int r = shape != NULL && want_shape != NULL ? PyObject_RichCompareBool(shape, want_shape, Py_EQ) : -1;
    Py_XDECREF(shape);
    Py_XDECREF(want_shape);
    return r;
}

/* Push one argument's operand code: a lazy value's id, or a new immediate. */
static inline int
push_operand(Columns *self, PyObject *a)
{
    if (is_own_value(self, a))
        return column_push(self->arg_code, ((ValueBase *)a)->vid);
    if (column_push(self->arg_code, -1 - PyList_GET_SIZE(self->imms)) < 0)
        return -1;
    return PyList_Append(self->imms, a);
}

/* Close a node whose operand codes are pushed: its columns, and its output ids (returned). */
static Py_ssize_t
push_node(Columns *self, PyObject *sid_obj, Py_ssize_t depth, Py_ssize_t num_outputs)
{
    Py_ssize_t sid = PyLong_AsSsize_t(sid_obj);
    if (sid == -1 && PyErr_Occurred())
        return -1;
    if (depth < self->phase_base)
        depth = self->phase_base;
    if (column_push(self->node_sig, sid) < 0 || column_push(self->node_depth, depth) < 0
            || column_push(self->arg_start, self->arg_code->len) < 0)
        return -1;
    Py_ssize_t first = self->num_values;
    self->num_values = first + num_outputs;
    return first;
}

/* The lazy outputs of a node: one value if single, else a tuple. */
static PyObject *
make_outputs(Columns *self, Py_ssize_t first, PyObject *out_avals, int single, Py_ssize_t depth)
{
    if (depth < self->phase_base)
        depth = self->phase_base;
    if (single)
        return make_value(first, PyTuple_GET_ITEM(out_avals, 0), depth, (PyObject *)self);
    Py_ssize_t nout = PyTuple_GET_SIZE(out_avals);
    PyObject *result = PyTuple_New(nout);
    for (Py_ssize_t k = 0; result != NULL && k < nout; k++) {
        PyObject *v = make_value(first + k, PyTuple_GET_ITEM(out_avals, k), depth, (PyObject *)self);
        if (v == NULL)
            Py_CLEAR(result);
        else
            PyTuple_SET_ITEM(result, k, v);
    }
    return result;
}

/* NOTE: [Input split] natively: the cell's input part (operands `keep`) becomes its own node at its
 * own depth, the rest reads the input part's outputs and the other operands at the call's depth.
 * parts = (prefix sid, prefix out_avals, keep, rest sid, rest out_avals, rest single, others). */
static PyObject *
append_split(Columns *self, PyObject *const *args, PyObject *parts, Py_ssize_t depth)
{
    PyObject *keep = PyTuple_GET_ITEM(parts, 2), *others = PyTuple_GET_ITEM(parts, 6);
    PyObject *prefix_out = PyTuple_GET_ITEM(parts, 1), *rest_out = PyTuple_GET_ITEM(parts, 4);
    Py_ssize_t prefix_depth = 0;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(keep); j++) {
        PyObject *a = args[PyLong_AsSsize_t(PyTuple_GET_ITEM(keep, j))];
        if (push_operand(self, a) < 0)
            return NULL;
        if (is_own_value(self, a) && ((ValueBase *)a)->depth >= prefix_depth)
            prefix_depth = ((ValueBase *)a)->depth + 1;
    }
    Py_ssize_t nprefix = PyTuple_GET_SIZE(prefix_out);
    Py_ssize_t first = push_node(self, PyTuple_GET_ITEM(parts, 0), prefix_depth, nprefix);
    if (first < 0)
        return NULL;
    for (Py_ssize_t k = 0; k < nprefix; k++)
        if (column_push(self->arg_code, first + k) < 0)
            return NULL;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(others); j++)
        if (push_operand(self, args[PyLong_AsSsize_t(PyTuple_GET_ITEM(others, j))]) < 0)
            return NULL;
    Py_ssize_t rest_first = push_node(self, PyTuple_GET_ITEM(parts, 3), depth, PyTuple_GET_SIZE(rest_out));
    if (rest_first < 0)
        return NULL;
    return make_outputs(self, rest_first, rest_out, PyTuple_GET_ITEM(parts, 5) == Py_True, depth);
}

/* Do the n arguments match an entry's pattern? 1 (and *depth: 1 + the deepest lazy argument of
 * this graph, 0 without one), 0, or -1 with an error set. Changes nothing. */
static int
match_pattern(Columns *self, PyObject *pattern, PyObject *const *args, Py_ssize_t n, Py_ssize_t *depth_out,
              int *ragged_out)
{
    if (n != PyTuple_GET_SIZE(pattern))
        return 0;
    Py_ssize_t depth = 0;
    Py_ssize_t k = -1;      /* the length of the call's ragged stacks (NOTE: [Native ragged stacks]) */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = args[i];
        PyObject *p = PyTuple_GET_ITEM(pattern, i);
        if (Py_TYPE(a) == value_type) {
            ValueBase *v = (ValueBase *)a;
            if (v->graph == (PyObject *)self) {
                if (v->aval != p)
                    return 0;
                if (v->depth >= depth)
                    depth = v->depth + 1;
                continue;
            }
        }
        if (Py_TYPE(a) == ragged_type) {
            RaggedBase *r = (RaggedBase *)a;
            if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 2 || PyTuple_GET_ITEM(p, 0) != ragged_key
                    || r->element != PyTuple_GET_ITEM(p, 1) || r->graph != (PyObject *)self)
                return 0;
            Py_ssize_t len = PyTuple_GET_SIZE(r->members);
            if (k >= 0 && len != k)
                return 0;
            k = len;
            if (r->top > depth)
                depth = r->top;
            continue;
        }
        /* a per-instance tensor operand of this pattern: (TENSOR_KEY, aval) */
        PyObject *tensor_aval = PyTuple_CheckExact(p) && PyTuple_GET_SIZE(p) == 2 && PyTuple_GET_ITEM(p, 0) == tensor_key
            ? PyTuple_GET_ITEM(p, 1) : NULL;
        if (Py_TYPE(a) == value_type) {
            ValueBase *v = (ValueBase *)a;
            if (tensor_aval == NULL || v->aval != tensor_aval || !is_stale_value(self, v))
                return 0;
        } else if (Py_TYPE(a) == tensor_type) {
            if (tensor_aval == NULL)
                return 0;
            int r = tensor_has_aval(a, tensor_aval);
            if (r <= 0)
                return r;
        } else if (PyLong_CheckExact(a)) {
            if (p != int_key)
                return 0;
        } else if (PyFloat_CheckExact(a)) {
            if (p != float_key)
                return 0;
        } else {
            return 0;
        }
    }
    *depth_out = depth;
    *ragged_out = k >= 0;
    return 1;
}

/* Record cell(*args) (n arguments) if fast_calls knows the cell and the arguments match one of its
 * patterns; else NotImplemented with nothing changed. An entry is (sid, pattern, out_avals, single,
 * split, next): split is None or, for a cell the recorder may split, (input depth, {kept-operands
 * bit mask: parts or None}); next is None or the entry of another op type of the same cell (a
 * chain's first step reads a plain tensor h0, the steps after it lazy values: NOTE: [Fast entry
 * chains] in frontend/recorder.py). The last two items may be missing. */
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
    /* First pass: find the entry whose pattern every argument matches, changing nothing. */
    Py_ssize_t depth = 0;
    int ragged = 0;
    for (;;) {
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 4) {
            PyErr_SetString(PyExc_TypeError, "a fast_calls entry is (sid, pattern, out_avals, single[, split, next])");
            return NULL;
        }
        int r = match_pattern(self, PyTuple_GET_ITEM(entry, 1), args, n, &depth, &ragged);
        if (r < 0)
            return NULL;
        if (r > 0)
            break;
        entry = PyTuple_GET_SIZE(entry) > 5 ? PyTuple_GET_ITEM(entry, 5) : Py_None;
        if (entry == Py_None)
            Py_RETURN_NOTIMPLEMENTED;
    }
    PyObject *parts = Py_None;
    if (PyTuple_GET_SIZE(entry) > 4 && PyTuple_GET_ITEM(entry, 4) != Py_None) {
        PyObject *split = PyTuple_GET_ITEM(entry, 4);
        /* shallower than the recurrent operands (depth - 1), at most `input depth` into the phase */
        Py_ssize_t limit = self->phase_base + PyLong_AsSsize_t(PyTuple_GET_ITEM(split, 0));
        if (limit > depth - 2)
            limit = depth - 2;
        if (limit >= self->phase_base) {    /* a recurrent operand exists */
            if (n > 62)
                Py_RETURN_NOTIMPLEMENTED;
            unsigned long long keep = 0;
            int deep = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                if (is_own_value(self, args[i]) && ((ValueBase *)args[i])->depth > limit)
                    deep = 1;
                else
                    keep |= 1ULL << i;
            }
            if (keep && deep) {
                PyObject *mask = PyLong_FromUnsignedLongLong(keep);
                if (mask == NULL)
                    return NULL;
                parts = PyDict_GetItemWithError(PyTuple_GET_ITEM(split, 1), mask);   /* borrowed */
                Py_DECREF(mask);
                if (parts == NULL) {
                    if (PyErr_Occurred())
                        return NULL;
                    Py_RETURN_NOTIMPLEMENTED;       /* the recorder decides this split, once */
                }
            }
        }
    }
    /* Second pass: append. */
    Py_ssize_t code_mark = self->arg_code->len, imm_mark = PyList_GET_SIZE(self->imms);
    Py_ssize_t node_mark = self->node_sig->len, values_mark = self->num_values;
    PyObject *result;
    if (parts != Py_None) {
        result = append_split(self, args, parts, depth);
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            if ((!ragged || Py_TYPE(args[i]) != ragged_type) && push_operand(self, args[i]) < 0)
                goto fail;
        /* a ragged node's operands: the fixed arguments, then every member of each stack in turn */
        for (Py_ssize_t i = 0; ragged && i < n; i++) {
            if (Py_TYPE(args[i]) != ragged_type)
                continue;
            PyObject *members = ((RaggedBase *)args[i])->members;
            for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(members); j++)
                if (column_push(self->arg_code, ((ValueBase *)PyTuple_GET_ITEM(members, j))->vid) < 0)
                    goto fail;
        }
        PyObject *out_avals = PyTuple_GET_ITEM(entry, 2);
        Py_ssize_t first = push_node(self, PyTuple_GET_ITEM(entry, 0), depth, PyTuple_GET_SIZE(out_avals));
        if (first < 0)
            goto fail;
        result = make_outputs(self, first, out_avals, PyTuple_GET_ITEM(entry, 3) == Py_True, depth);
    }
    if (result != NULL)
        return result;
fail:
    self->arg_code->len = code_mark;
    truncate_imms(self->imms, imm_mark);
    self->node_sig->len = node_mark;
    self->node_depth->len = node_mark;
    self->arg_start->len = node_mark + 1;
    self->num_values = values_mark;
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
    {"run", T_OBJECT_EX, offsetof(Columns, run), 0, "the fibers run recording this graph (a token), or None"},
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


/* *** RecorderSlot: the thread's active recorder ***
 *
 * NOTE: [Native recorder slot] every recorded cell call needs the thread's active recorder and its
 * graph. Read from a threading.local (slot.rec, then rec.graph) that was two generic attribute
 * lookups, ~12% of TreeLSTM's recording (callgrind: ~360 instructions each of ~6,000 per node).
 * A RecorderSlot keeps ``rec`` and ``hub`` per OS thread in C thread-specific storage, as
 * threading.local does (greenlets of one thread share them, as they share a threading.local), and
 * caches the recorder's graph when ``rec`` is set (a Recorder's graph is fixed at construction), so
 * CellCall reads both with one TSS lookup. The Python twin is a threading.local with the same two
 * attributes (ir/columns.py).
 */

typedef struct {
    PyObject *rec;      /* NULL means None */
    PyObject *graph;    /* rec.graph when it is a Columns, else NULL */
    PyObject *hub;
} SlotState;

static Py_tss_t slot_key = Py_tss_NEEDS_INIT;
static PyObject *str_rec, *str_graph;

static SlotState *
slot_state(int create)
{
    SlotState *s = (SlotState *)PyThread_tss_get(&slot_key);
    if (s == NULL && create) {
        s = (SlotState *)PyMem_RawCalloc(1, sizeof(SlotState));
        if (s == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        if (PyThread_tss_set(&slot_key, s) != 0) {
            PyMem_RawFree(s);
            PyErr_SetString(PyExc_RuntimeError, "phalanx.ir._columns: cannot set thread-specific storage");
            return NULL;
        }
    }
    return s;
}

typedef struct {
    PyObject_HEAD
} RecorderSlot;

static PyTypeObject RecorderSlotType;

static PyObject *
slot_get_rec(RecorderSlot *self, void *closure)
{
    SlotState *s = slot_state(0);
    return Py_NewRef(s != NULL && s->rec != NULL ? s->rec : Py_None);
}

static int
slot_set_rec(RecorderSlot *self, PyObject *rec, void *closure)
{
    SlotState *s = slot_state(1);
    if (s == NULL)
        return -1;
    PyObject *graph = NULL;
    if (rec != NULL && rec != Py_None) {
        graph = PyObject_GetAttr(rec, str_graph);
        if (graph == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
        } else if (!PyObject_TypeCheck(graph, &ColumnsType)) {
            Py_CLEAR(graph);
        }
    }
    PyObject *old_rec = s->rec, *old_graph = s->graph;
    s->rec = rec != NULL && rec != Py_None ? Py_NewRef(rec) : NULL;
    s->graph = graph;
    Py_XDECREF(old_rec);
    Py_XDECREF(old_graph);
    return 0;
}

static PyObject *
slot_get_hub(RecorderSlot *self, void *closure)
{
    SlotState *s = slot_state(0);
    return Py_NewRef(s != NULL && s->hub != NULL ? s->hub : Py_None);
}

static int
slot_set_hub(RecorderSlot *self, PyObject *hub, void *closure)
{
    SlotState *s = slot_state(1);
    if (s == NULL)
        return -1;
    PyObject *old = s->hub;
    s->hub = hub != NULL && hub != Py_None ? Py_NewRef(hub) : NULL;
    Py_XDECREF(old);
    return 0;
}

static PyGetSetDef slot_getset[] = {
    {"rec", (getter)slot_get_rec, (setter)slot_set_rec, "this thread's active Recorder, or None", NULL},
    {"hub", (getter)slot_get_hub, (setter)slot_set_hub, "this thread's fibers hub, or None", NULL},
    {NULL},
};

static PyTypeObject RecorderSlotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.RecorderSlot",
    .tp_doc = "The thread's active recorder and fibers hub (per thread, like threading.local).",
    .tp_basicsize = sizeof(RecorderSlot),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_getset = slot_getset,
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

static PyObject *
cellcall_vectorcall(CellCall *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs >= 1 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)) {
        PyObject *out = NULL;
        if (Py_TYPE(self->slot) == &RecorderSlotType) {
            /* NOTE: [Native recorder slot]: no attribute lookup */
            SlotState *s = slot_state(0);
            if (s != NULL && s->graph != NULL)
                out = append_call_impl((Columns *)s->graph, args[0], args + 1, nargs - 1);
        } else {
            PyObject *rec = PyObject_GetAttr(self->slot, str_rec);
            if (rec == NULL)
                return NULL;
            if (rec != Py_None) {
                PyObject *graph = PyObject_GetAttr(rec, str_graph);
                Py_DECREF(rec);
                if (graph == NULL)
                    return NULL;
                if (PyObject_TypeCheck(graph, &ColumnsType))
                    out = append_call_impl((Columns *)graph, args[0], args + 1, nargs - 1);
                Py_DECREF(graph);
            } else {
                Py_DECREF(rec);
            }
        }
        if (out == NULL) {
            if (PyErr_Occurred())
                return NULL;
        } else if (out != Py_NotImplemented) {
            return out;               /* the outputs */
        } else {
            Py_DECREF(out);
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

static PyObject *
cellcall_get_name(CellCall *self, void *closure)
{
    return PyUnicode_FromString("__call__");
}

static PyObject *
cellcall_repr(CellCall *self)
{
    return PyUnicode_FromFormat("<phalanx CellCall wrapping %R>", self->fallback);
}

static PyGetSetDef cellcall_getset[] = {
    {"__name__", (getter)cellcall_get_name, NULL, NULL, NULL},
    {"__qualname__", (getter)cellcall_get_name, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef cellcall_members[] = {
    {"fallback", T_OBJECT_EX, offsetof(CellCall, fallback), READONLY, "the Python __call__ it defers to"},
    /* inspect.signature(cell) follows __wrapped__ to the Python __call__'s signature */
    {"__wrapped__", T_OBJECT_EX, offsetof(CellCall, fallback), READONLY, NULL},
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
    .tp_getset = cellcall_getset,
    .tp_repr = (reprfunc)cellcall_repr,
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = cellcall_descr_get,
    .tp_vectorcall_offset = offsetof(CellCall, vectorcall),
};

/* stack_values(xs) -> a RaggedStack of xs, or NotImplemented: NOTE: [Native ragged stacks]. The
 * common ``torch.stack(xs)`` of lazy values: xs a non-empty list or tuple of lazy values of the
 * active recorder's graph, of one aval. Anything else (another dim, tensors, values of another
 * graph or aval, no active recorder) is NotImplemented: the recorder's try_stack decides. */
static PyObject *
stack_values_impl(PyObject *xs)
{
    if (ragged_type == NULL || value_type == NULL || !(PyList_CheckExact(xs) || PyTuple_CheckExact(xs)))
        Py_RETURN_NOTIMPLEMENTED;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(xs);
    SlotState *s = slot_state(0);
    if (n == 0 || s == NULL || s->graph == NULL)
        Py_RETURN_NOTIMPLEMENTED;
    PyObject **items = PySequence_Fast_ITEMS(xs);
    PyObject *graph = s->graph, *element = NULL;
    Py_ssize_t top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        ValueBase *v = (ValueBase *)items[i];
        if (Py_TYPE(v) != value_type || v->graph != graph || (element != NULL && v->aval != element))
            Py_RETURN_NOTIMPLEMENTED;
        element = v->aval;
        if (v->depth >= top)
            top = v->depth + 1;
    }
    PyObject *members = PyList_CheckExact(xs) ? PyList_AsTuple(xs) : Py_NewRef(xs);
    if (members == NULL)
        return NULL;
    RaggedBase *r = (RaggedBase *)ragged_type->tp_alloc(ragged_type, 0);
    if (r == NULL) {
        Py_DECREF(members);
        return NULL;
    }
    r->members = members;
    r->element = Py_NewRef(element);
    r->graph = Py_NewRef(graph);
    r->top = top;
    return (PyObject *)r;
}

static PyObject *
stack_values(PyObject *module, PyObject *xs)
{
    return stack_values_impl(xs);
}

/* *** TorchFunction: LazyValue.__torch_function__ ***
 *
 * torch calls a lazy value's ``__torch_function__(cls, func, types, args, kwargs)`` for every torch
 * function it is passed to. A TorchFunction (wrapped in a classmethod) answers the commonest,
 * ``torch.stack(xs)`` of lazy values, with stack_values (NOTE: [Native ragged stacks]) without a
 * Python frame, and hands every other call, and any stack that declines, to ``fallback`` (the
 * Python body, frontend/value.py) with the same arguments. */

typedef struct {
    PyObject_HEAD
    PyObject *stack;       /* torch.stack */
    PyObject *fallback;    /* fallback(cls, func, types, args=(), kwargs=None) */
    vectorcallfunc vectorcall;
} TorchFunction;

static PyObject *
torchfunction_vectorcall(TorchFunction *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if ((kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) && nargs >= 4 && nargs <= 5 && args[1] == self->stack
            && PyTuple_CheckExact(args[3]) && PyTuple_GET_SIZE(args[3]) == 1
            && (nargs == 4 || args[4] == Py_None || (PyDict_CheckExact(args[4]) && PyDict_GET_SIZE(args[4]) == 0))) {
        PyObject *out = stack_values_impl(PyTuple_GET_ITEM(args[3], 0));
        if (out != Py_NotImplemented)
            return out;       /* the stack, or NULL with an error set */
        Py_DECREF(out);
    }
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
torchfunction_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"stack", "fallback", NULL};
    PyObject *stack, *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:TorchFunction", names, &stack, &fallback))
        return NULL;
    TorchFunction *self = (TorchFunction *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->stack = Py_NewRef(stack);
    self->fallback = Py_NewRef(fallback);
    self->vectorcall = (vectorcallfunc)torchfunction_vectorcall;
    return (PyObject *)self;
}

static int
torchfunction_traverse(TorchFunction *self, visitproc visit, void *arg)
{
    Py_VISIT(self->stack);
    Py_VISIT(self->fallback);
    return 0;
}

static int
torchfunction_clear(TorchFunction *self)
{
    Py_CLEAR(self->stack);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
torchfunction_dealloc(TorchFunction *self)
{
    PyObject_GC_UnTrack(self);
    torchfunction_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef torchfunction_members[] = {
    {"fallback", T_OBJECT_EX, offsetof(TorchFunction, fallback), READONLY, "the Python body it defers to"},
    {"__wrapped__", T_OBJECT_EX, offsetof(TorchFunction, fallback), READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(TorchFunction, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject TorchFunctionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phalanx.ir._columns.TorchFunction",
    .tp_doc = "LazyValue.__torch_function__ with torch.stack of lazy values made natively (ir/_columns.c).",
    .tp_basicsize = sizeof(TorchFunction),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = torchfunction_new,
    .tp_dealloc = (destructor)torchfunction_dealloc,
    .tp_traverse = (traverseproc)torchfunction_traverse,
    .tp_clear = (inquiry)torchfunction_clear,
    .tp_members = torchfunction_members,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(TorchFunction, vectorcall),
};

static PyObject *
set_ragged_type(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &RaggedBaseType)) {
        PyErr_SetString(PyExc_TypeError, "set_ragged_type(a subclass of RaggedBase)");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(ragged_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

/* *** module *** */

static PyObject *
set_value_type(PyObject *module, PyObject *const *argv, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyType_Check(argv[0]) || !PyType_IsSubtype((PyTypeObject *)argv[0], &ValueBaseType)
            || !PyType_Check(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "set_value_type(a subclass of ValueBase, torch.Tensor)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)argv[0];
    clear_value_freelist();
    /* NOTE: [Value freelist]: only a heap subclass that adds nothing to ValueBase's layout */
    value_type_pooled = (cls->tp_flags & Py_TPFLAGS_HEAPTYPE) && cls->tp_base == &ValueBaseType
        && cls->tp_basicsize == ValueBaseType.tp_basicsize && cls->tp_itemsize == 0 && cls->tp_dictoffset == 0
        && cls->tp_weaklistoffset == 0 && cls->tp_finalize == NULL && cls->tp_del == NULL;
    if (value_type_pooled)
        cls->tp_dealloc = (destructor)value_class_dealloc;
    Py_INCREF(cls);
    Py_XSETREF(value_type, cls);
    Py_INCREF(argv[1]);
    Py_XSETREF(tensor_type, (PyTypeObject *)argv[1]);
    Py_RETURN_NONE;
}

/* plain_items(items) -> bool: is every item an int, float, bool, str, bytes, complex or None (of
 * exactly those types)? What lazify asks of every container of an instance (a sentence's word
 * ids) to know that it holds no tensor: a pointer compare per item instead of a Python
 * isinstance (frontend/recorder.py). Lists and tuples are read directly; anything else is
 * iterated. */
static inline int
is_plain_item(PyObject *x)
{
    PyTypeObject *t = Py_TYPE(x);
    return t == &PyLong_Type || t == &PyFloat_Type || t == &PyUnicode_Type || x == Py_None || t == &PyBool_Type
        || t == &PyBytes_Type || t == &PyComplex_Type;
}

static PyObject *
plain_items(PyObject *module, PyObject *items)
{
    if (PyList_CheckExact(items) || PyTuple_CheckExact(items)) {
        PyObject **data = PySequence_Fast_ITEMS(items);
        for (Py_ssize_t i = 0, n = PySequence_Fast_GET_SIZE(items); i < n; i++)
            if (!is_plain_item(data[i]))
                Py_RETURN_FALSE;
        Py_RETURN_TRUE;
    }
    PyObject *it = PyObject_GetIter(items);
    if (it == NULL)
        return NULL;
    PyObject *x;
    while ((x = PyIter_Next(it)) != NULL) {
        int plain = is_plain_item(x);
        Py_DECREF(x);
        if (!plain) {
            Py_DECREF(it);
            Py_RETURN_FALSE;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_TRUE;
}

static PyMethodDef module_methods[] = {
    {"plain_items", (PyCFunction)plain_items, METH_O,
     "plain_items(items) -> whether every item is an int, float, bool, str, bytes, complex or None"},
    {"stack_values", (PyCFunction)stack_values, METH_O,
     "stack_values(xs) -> a RaggedStack of the lazy values xs, or NotImplemented (NOTE: [Native ragged stacks])"},
    {"set_ragged_type", (PyCFunction)set_ragged_type, METH_O,
     "set_ragged_type(cls): the RaggedBase subclass stack_values creates and append_call reads"},
    {"set_value_type", (PyCFunction)(void (*)(void))set_value_type, METH_FASTCALL,
     "set_value_type(value class, tensor class): the ValueBase subclass append_call creates, and the exact "
     "tensor type a per-instance tensor operand has"},
    {NULL},
};

static struct PyModuleDef columns_module = {
    PyModuleDef_HEAD_INIT, "phalanx.ir._columns", "Native recording columns (NOTE: [Native columns]).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__columns(void)
{
    if (PyType_Ready(&ValueBaseType) < 0 || PyType_Ready(&ColumnsType) < 0 || PyType_Ready(&CellCallType) < 0
            || PyType_Ready(&IntColumnType) < 0 || PyType_Ready(&RecorderSlotType) < 0
            || PyType_Ready(&RaggedBaseType) < 0 || PyType_Ready(&TorchFunctionType) < 0)
        return NULL;
    if (!PyThread_tss_is_created(&slot_key) && PyThread_tss_create(&slot_key) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "phalanx.ir._columns: cannot create thread-specific storage");
        return NULL;
    }
    str_rec = PyUnicode_InternFromString("rec");
    str_graph = PyUnicode_InternFromString("graph");
    str_shape = PyUnicode_InternFromString("shape");
    str_dtype = PyUnicode_InternFromString("dtype");
    if (str_rec == NULL || str_graph == NULL || str_shape == NULL || str_dtype == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&columns_module);
    if (m == NULL)
        return NULL;
    /* Plain sentinels: they can equal nothing but themselves in a signature key. */
    int_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    float_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    tensor_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    ragged_key = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    Py_INCREF(&ValueBaseType);
    Py_INCREF(&ColumnsType);
    if (int_key == NULL || float_key == NULL || tensor_key == NULL || ragged_key == NULL
            || PyModule_AddObjectRef(m, "RaggedBase", (PyObject *)&RaggedBaseType) < 0
            || PyModule_AddObjectRef(m, "TorchFunction", (PyObject *)&TorchFunctionType) < 0
            || PyModule_AddObjectRef(m, "RAGGED_KEY", ragged_key) < 0
            || PyModule_AddObject(m, "ValueBase", (PyObject *)&ValueBaseType) < 0
            || PyModule_AddObject(m, "Columns", (PyObject *)&ColumnsType) < 0
            || PyModule_AddObjectRef(m, "CellCall", (PyObject *)&CellCallType) < 0
            || PyModule_AddObjectRef(m, "IntColumn", (PyObject *)&IntColumnType) < 0
            || PyModule_AddObjectRef(m, "RecorderSlot", (PyObject *)&RecorderSlotType) < 0
            || PyModule_AddObjectRef(m, "INT_KEY", int_key) < 0
            || PyModule_AddObjectRef(m, "FLOAT_KEY", float_key) < 0
            || PyModule_AddObjectRef(m, "TENSOR_KEY", tensor_key) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
