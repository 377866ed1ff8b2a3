/* breachwatch._speedups: the per-line hot path of the pgaudit stderr reader, in C.
 *
 * Each function here has a pure-Python twin that stays the definition (breachwatch/sources/
 * files.py, breachwatch/parsers/pgaudit.py, breachwatch/parsers/pg_events.py); the tests run
 * both on the same input and compare. What this file does faster is only the common case:
 * ASCII text, a known line head, a known statement template. Everything else is handed to
 * the Python code, which also fills the caches (dicts shared with it) that the C side reads.
 *
 * Objects are built with Builder: a frozen, slotted dataclass instance allocated and its
 * slots stored directly, which is what the generated __init__ does, without running Python.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))
#define MAX_FIELDS 32
/* entries of a cache dict before it is cleared: pg_events._TEMPLATE_LIMIT's value */
#define CACHE_LIMIT 8192

/* The byte offset of a class's slot: its member descriptor says where the slot lives. */
static Py_ssize_t
slot_offset(PyObject *cls, const char *name)
{
    PyObject *descr = PyObject_GetAttrString(cls, name);
    if (descr == NULL)
        return -1;
    if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%R.%s is not a slot", cls, name);
        Py_DECREF(descr);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    Py_ssize_t offset = member->offset;
    int type = member->type;
    Py_DECREF(descr);
    if (type != T_OBJECT_EX && type != T_OBJECT) {
        PyErr_Format(PyExc_TypeError, "%R.%s is not an object slot", cls, name);
        return -1;
    }
    return offset;
}

/* ---- Builder ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;
    Py_ssize_t n;
    Py_ssize_t offsets[MAX_FIELDS];
    vectorcallfunc vectorcall;
} Builder;

static PyObject *
build(Builder *b, PyObject *const *values)
{
    PyObject *obj = b->cls->tp_alloc(b->cls, 0);
    if (obj == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < b->n; i++)
        SLOT(obj, b->offsets[i]) = Py_NewRef(values[i]);
    return obj;
}

static PyObject *
builder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Builder *b = (Builder *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyErr_SetString(PyExc_TypeError, "Builder takes positional values only");
        return NULL;
    }
    if (nargs != b->n) {
        PyErr_Format(PyExc_TypeError, "%s builder takes %zd values, got %zd", b->cls->tp_name,
                     b->n, nargs);
        return NULL;
    }
    return build(b, args);
}

static PyObject *
builder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *cls, *names;
    if (!PyArg_ParseTuple(args, "O!O!:Builder", &PyType_Type, &cls, &PyTuple_Type, &names))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "too many fields");
        return NULL;
    }
    if (((PyTypeObject *)cls)->tp_dictoffset != 0) {
        PyErr_Format(PyExc_TypeError, "%R has a __dict__: not a slotted class", cls);
        return NULL;
    }
    Builder *b = (Builder *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->cls = (PyTypeObject *)Py_NewRef(cls);
    b->n = n;
    b->vectorcall = builder_vectorcall;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        const char *text = PyUnicode_AsUTF8(name);
        if (text == NULL || (b->offsets[i] = slot_offset(cls, text)) < 0) {
            Py_DECREF(b);
            return NULL;
        }
    }
    return (PyObject *)b;
}

static void
builder_dealloc(Builder *b)
{
    Py_XDECREF(b->cls);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *
builder_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    return PyVectorcall_Call(self, args, kwds);
}

static PyTypeObject BuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "breachwatch._speedups.Builder",
    .tp_basicsize = sizeof(Builder),
    .tp_dealloc = (destructor)builder_dealloc,
    .tp_vectorcall_offset = offsetof(Builder, vectorcall),
    .tp_call = builder_call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Builder(cls, names): builder(*values) makes an instance of a slotted class "
              "with those slots set, without running __init__.",
    .tp_new = builder_new,
};

static Builder *
as_builder(PyObject *obj)
{
    if (!Py_IS_TYPE(obj, &BuilderType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Builder");
        return NULL;
    }
    return (Builder *)obj;
}

/* ---- lines of a block ------------------------------------------------------------------- */

/* lines_of(raws, has_cr, offset, line_no, max_line_bytes, line_builder)
 *   -> (lines, offset, line_no): sources.files._lines */
static PyObject *
lines_of(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "lines_of takes 6 arguments");
        return NULL;
    }
    PyObject *raws = args[0];
    if (!PyList_Check(raws)) {
        PyErr_SetString(PyExc_TypeError, "raws must be a list of bytes");
        return NULL;
    }
    int has_cr = PyObject_IsTrue(args[1]);
    Py_ssize_t offset = PyLong_AsSsize_t(args[2]);
    Py_ssize_t line_no = PyLong_AsSsize_t(args[3]);
    Py_ssize_t max_bytes = PyLong_AsSsize_t(args[4]);
    if (has_cr < 0 || PyErr_Occurred())
        return NULL;
    if (max_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "max_line_bytes must not be negative");
        return NULL;
    }
    Builder *line_builder = as_builder(args[5]);
    if (line_builder == NULL)
        return NULL;
    if (line_builder->n != 6) {
        PyErr_SetString(PyExc_TypeError, "the line builder must take 6 values");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(raws);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *body = PyList_GET_ITEM(raws, i);
        if (!PyBytes_Check(body)) {
            PyErr_SetString(PyExc_TypeError, "raws must be a list of bytes");
            goto fail;
        }
        const char *data = PyBytes_AS_STRING(body);
        Py_ssize_t size = PyBytes_GET_SIZE(body);
        line_no += 1;
        Py_ssize_t end = offset + size + 1;
        if (has_cr && size > 0 && data[size - 1] == '\r')
            size -= 1;
        int truncated = size > max_bytes;
        if (truncated)
            size = max_bytes;
        int decode_errors = 0;
        PyObject *text = PyUnicode_DecodeUTF8(data, size, "strict");
        if (text == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto fail;
            PyErr_Clear();
            decode_errors = 1;
            text = PyUnicode_DecodeUTF8(data, size, "replace");
            if (text == NULL)
                goto fail;
        }
        PyObject *start_obj = PyLong_FromSsize_t(offset);
        PyObject *end_obj = PyLong_FromSsize_t(end);
        PyObject *no_obj = PyLong_FromSsize_t(line_no);
        PyObject *line = NULL;
        if (start_obj && end_obj && no_obj) {
            PyObject *values[6] = {text, start_obj, end_obj, no_obj,
                                   truncated ? Py_True : Py_False,
                                   decode_errors ? Py_True : Py_False};
            line = build(line_builder, values);
        }
        Py_DECREF(text);
        Py_XDECREF(start_obj);
        Py_XDECREF(end_obj);
        Py_XDECREF(no_obj);
        if (line == NULL)
            goto fail;
        PyList_SET_ITEM(out, i, line);
        offset = end;
    }
    return Py_BuildValue("(Nnn)", out, offset, line_no);
fail:
    Py_DECREF(out);
    return NULL;
}

/* ---- helpers on ASCII str --------------------------------------------------------------- */

static inline const char *
ascii_data(PyObject *text, Py_ssize_t *len)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text))
        return NULL;
    *len = PyUnicode_GET_LENGTH(text);
    return (const char *)PyUnicode_DATA(text);
}

/* str.find(sub, start) on bytes; -1 when absent. */
static inline Py_ssize_t
find_from(const char *s, Py_ssize_t len, const char *sub, Py_ssize_t sublen, Py_ssize_t start)
{
    if (start < 0)
        start = 0;
    if (start > len || len - start < sublen)
        return -1;
    const char *hit = memmem(s + start, (size_t)(len - start), sub, (size_t)sublen);
    return hit ? hit - s : -1;
}

static inline Py_ssize_t
find_char(const char *s, Py_ssize_t len, char c, Py_ssize_t start)
{
    if (start < 0)
        start = 0;
    if (start >= len)
        return -1;
    const char *hit = memchr(s + start, c, (size_t)(len - start));
    return hit ? hit - s : -1;
}

static inline Py_ssize_t
rfind_sub(const char *s, Py_ssize_t len, const char *sub, Py_ssize_t sublen)
{
    for (Py_ssize_t i = len - sublen; i >= 0; i--)
        if (memcmp(s + i, sub, (size_t)sublen) == 0)
            return i;
    return -1;
}

static inline int
all_digits(const char *s, Py_ssize_t start, Py_ssize_t end)
{
    if (end <= start)
        return 0;
    for (Py_ssize_t i = start; i < end; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

/* ---- Lane: the framer's push_many and the parser's AUDIT line, for pgaudit stderr -------- */

typedef struct {
    PyObject_HEAD
    /* framing */
    PyObject *record_builder;  /* Record(path, lines) */
    PyObject *matched_builder; /* _MatchedRecord(path, lines, matches) */
    PyObject *attached;        /* frozenset of severities that attach to the held record */
    PyTypeObject *line_type;
    PyTypeObject *head_type;
    PyTypeObject *matched_type;
    Py_ssize_t line_text, line_offset, line_end, line_no, line_truncated, line_decode_errors;
    Py_ssize_t head_severity, head_key, head_user, head_database, head_application,
        head_client, head_session, head_tags;
    Py_ssize_t rec_path, rec_lines, rec_matches;
    /* parsing */
    PyObject *fast;           /* pg_events._FAST */
    PyObject *tag_cache;      /* pg_events._TAGS */
    PyObject *general_fields; /* pg_events._general_fields */
    PyObject *decode_parameters;
    PyObject *event_tags;       /* pg_events._event_tags(key) for a miss */
    PyObject *audit_line_py;    /* the Python _audit_line, for what this does not handle */
    PyObject *event_builder;    /* AccessEvent */
    PyObject *position_builder; /* SourcePosition */
    PyObject *no_param_fields;  /* template -> sql_fields(...) of a statement without
                                   parameters; cleared when the enricher changes */
    PyObject *enricher;         /* the enricher the cache above belongs to */
    PyObject *sql, *sql_fields, *person_of;
    /* sql.enrich: the plan of a relation without refs, the actions whose reads can be
       unbounded, Action.READ and Action.EXPORT */
    PyObject *no_refs, *row_actions, *action_read, *action_export;
} Lane;

static PyObject *s_none_text, *s_log, *s_empty_str, *s_empty_tuple,
    *s_not_logged_tag, *s_plans;

static void
lane_clear_refs(Lane *l)
{
    Py_CLEAR(l->record_builder);
    Py_CLEAR(l->matched_builder);
    Py_CLEAR(l->attached);
    Py_CLEAR(l->line_type);
    Py_CLEAR(l->head_type);
    Py_CLEAR(l->matched_type);
    Py_CLEAR(l->fast);
    Py_CLEAR(l->tag_cache);
    Py_CLEAR(l->general_fields);
    Py_CLEAR(l->decode_parameters);
    Py_CLEAR(l->event_tags);
    Py_CLEAR(l->audit_line_py);
    Py_CLEAR(l->event_builder);
    Py_CLEAR(l->position_builder);
    Py_CLEAR(l->no_param_fields);
    Py_CLEAR(l->enricher);
    Py_CLEAR(l->sql_fields);
    Py_CLEAR(l->sql);
    Py_CLEAR(l->no_refs);
    Py_CLEAR(l->row_actions);
    Py_CLEAR(l->action_read);
    Py_CLEAR(l->action_export);
    Py_CLEAR(l->person_of);
}

static void
lane_dealloc(Lane *l)
{
    PyObject_GC_UnTrack(l);
    lane_clear_refs(l);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static int
lane_traverse(Lane *l, visitproc visit, void *arg)
{
    Py_VISIT(l->record_builder);
    Py_VISIT(l->matched_builder);
    Py_VISIT(l->attached);
    Py_VISIT(l->line_type);
    Py_VISIT(l->head_type);
    Py_VISIT(l->matched_type);
    Py_VISIT(l->fast);
    Py_VISIT(l->tag_cache);
    Py_VISIT(l->general_fields);
    Py_VISIT(l->decode_parameters);
    Py_VISIT(l->event_tags);
    Py_VISIT(l->audit_line_py);
    Py_VISIT(l->event_builder);
    Py_VISIT(l->position_builder);
    Py_VISIT(l->no_param_fields);
    Py_VISIT(l->enricher);
    Py_VISIT(l->sql_fields);
    Py_VISIT(l->sql);
    Py_VISIT(l->no_refs);
    Py_VISIT(l->row_actions);
    Py_VISIT(l->action_read);
    Py_VISIT(l->action_export);
    Py_VISIT(l->person_of);
    return 0;
}

static int
lane_clear(Lane *l)
{
    lane_clear_refs(l);
    return 0;
}

#define OFFSET(field, cls, name)                                                               \
    if ((l->field = slot_offset((PyObject *)(cls), (name))) < 0)                             \
        goto fail;

/* Lane(record_builder, matched_builder, attached, line_type, head_type, fast, tags,
 *      general_fields, decode_parameters, event_tags, audit_line_py, event_builder,
 *      position_builder, no_refs, row_actions, action_read, action_export) */
static PyObject *
lane_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *record_builder, *matched_builder, *attached, *line_type, *head_type, *fast,
        *tags, *general_fields, *decode_parameters, *event_tags, *audit_line_py,
        *event_builder, *position_builder, *no_refs, *row_actions, *action_read, *action_export;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!OOOOO!O!OOOO:Lane", &BuilderType, &record_builder,
                          &BuilderType, &matched_builder, &PyFrozenSet_Type, &attached,
                          &PyType_Type, &line_type, &PyType_Type, &head_type, &PyDict_Type,
                          &fast, &PyDict_Type, &tags, &general_fields, &decode_parameters,
                          &event_tags, &audit_line_py, &BuilderType, &event_builder,
                          &BuilderType, &position_builder, &no_refs, &row_actions,
                          &action_read, &action_export))
        return NULL;
    if (((Builder *)event_builder)->n != 19 || ((Builder *)position_builder)->n != 5 ||
        ((Builder *)record_builder)->n != 2 || ((Builder *)matched_builder)->n != 3) {
        PyErr_SetString(PyExc_TypeError, "unexpected builder arity");
        return NULL;
    }
    Lane *l = (Lane *)type->tp_alloc(type, 0);
    if (l == NULL)
        return NULL;
    l->record_builder = Py_NewRef(record_builder);
    l->matched_builder = Py_NewRef(matched_builder);
    l->attached = Py_NewRef(attached);
    l->line_type = (PyTypeObject *)Py_NewRef(line_type);
    l->head_type = (PyTypeObject *)Py_NewRef(head_type);
    l->matched_type = (PyTypeObject *)Py_NewRef(((Builder *)matched_builder)->cls);
    l->fast = Py_NewRef(fast);
    l->tag_cache = Py_NewRef(tags);
    l->general_fields = Py_NewRef(general_fields);
    l->decode_parameters = Py_NewRef(decode_parameters);
    l->event_tags = Py_NewRef(event_tags);
    l->audit_line_py = Py_NewRef(audit_line_py);
    l->event_builder = Py_NewRef(event_builder);
    l->position_builder = Py_NewRef(position_builder);
    l->no_refs = Py_NewRef(no_refs);
    l->row_actions = Py_NewRef(row_actions);
    l->action_read = Py_NewRef(action_read);
    l->action_export = Py_NewRef(action_export);
    l->no_param_fields = PyDict_New();
    if (l->no_param_fields == NULL)
        goto fail;
    OFFSET(line_text, line_type, "text");
    OFFSET(line_offset, line_type, "offset");
    OFFSET(line_end, line_type, "end_offset");
    OFFSET(line_no, line_type, "line_no");
    OFFSET(line_truncated, line_type, "truncated");
    OFFSET(line_decode_errors, line_type, "decode_errors");
    OFFSET(head_severity, head_type, "severity");
    OFFSET(head_key, head_type, "key");
    OFFSET(head_user, head_type, "user");
    OFFSET(head_database, head_type, "database");
    OFFSET(head_application, head_type, "application");
    OFFSET(head_client, head_type, "client");
    OFFSET(head_session, head_type, "session");
    OFFSET(head_tags, head_type, "tags");
    OFFSET(rec_path, l->matched_type, "path");
    OFFSET(rec_lines, l->matched_type, "lines");
    OFFSET(rec_matches, l->matched_type, "matches");
    return (PyObject *)l;
fail:
    Py_DECREF(l);
    return NULL;
}

/* The prefix split of one line, as _PrefixSplitter.__call__ gives it: a new reference to
 * (head, time, message), Py_None, or NULL on error. *last_time is the splitter's cache. */
static PyObject *
split_line(PyObject *text, PyObject *split, PyObject *heads, PyObject *time_ok, int fast,
           PyObject **last_time)
{
    Py_ssize_t len;
    const char *s = fast ? ascii_data(text, &len) : NULL;
    if (s != NULL) {
        Py_ssize_t j = find_from(s, len, ":  ", 3, 0);
        if (j > 0) {
            Py_ssize_t sp = find_char(s, len, ' ', 11);
            sp = sp > 0 ? find_char(s, len, ' ', sp + 1) : -1;
            if (0 < sp && sp < j) {
                PyObject *key = PyUnicode_Substring(text, sp, j + 3);
                if (key == NULL)
                    return NULL;
                PyObject *head = PyDict_GetItemWithError(heads, key); /* borrowed */
                Py_DECREF(key);
                if (head == NULL && PyErr_Occurred())
                    return NULL;
                if (head != NULL) {
                    PyObject *time = PyUnicode_Substring(text, 0, sp);
                    if (time == NULL)
                        return NULL;
                    int ok = *last_time != NULL && PyUnicode_Check(*last_time) &&
                             PyUnicode_IS_ASCII(*last_time) &&
                             PyUnicode_GET_LENGTH(*last_time) == sp &&
                             memcmp(PyUnicode_DATA(*last_time), s, (size_t)sp) == 0;
                    if (!ok) {
                        PyObject *m = PyObject_CallOneArg(time_ok, time);
                        if (m == NULL) {
                            Py_DECREF(time);
                            return NULL;
                        }
                        ok = m != Py_None;
                        Py_DECREF(m);
                        if (ok)
                            Py_XSETREF(*last_time, Py_NewRef(time));
                    }
                    if (ok) {
                        PyObject *message = PyUnicode_Substring(text, j + 3, len);
                        if (message == NULL) {
                            Py_DECREF(time);
                            return NULL;
                        }
                        PyObject *result = PyTuple_Pack(3, head, time, message);
                        Py_DECREF(time);
                        Py_DECREF(message);
                        return result;
                    }
                    Py_DECREF(time);
                }
            }
        }
    }
    return PyObject_CallOneArg(split, text);
}

static int
emit_held(Lane *l, PyObject *out, PyObject *path, PyObject *held, PyObject *matches)
{
    PyObject *lines = PyList_AsTuple(held);
    PyObject *ms = lines ? PyList_AsTuple(matches) : NULL;
    PyObject *record = NULL;
    if (ms != NULL) {
        PyObject *values[3] = {path, lines, ms};
        record = build((Builder *)l->matched_builder, values);
    }
    Py_XDECREF(lines);
    Py_XDECREF(ms);
    if (record == NULL)
        return -1;
    int rc = PyList_Append(out, record);
    Py_DECREF(record);
    return rc;
}

static int
emit_single(Lane *l, PyObject *out, PyObject *path, PyObject *line)
{
    PyObject *lines = PyTuple_Pack(1, line);
    if (lines == NULL)
        return -1;
    PyObject *values[2] = {path, lines};
    PyObject *record = build((Builder *)l->record_builder, values);
    Py_DECREF(lines);
    if (record == NULL)
        return -1;
    int rc = PyList_Append(out, record);
    Py_DECREF(record);
    return rc;
}

/* lane.push_many(lines, path, split, heads, time_ok, fast, last_time, held, matches, held_key)
 *   -> (records, held, matches, held_key, last_time): PgStderrFramer._push_many */
static PyObject *
lane_push_many(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "push_many takes 10 arguments");
        return NULL;
    }
    PyObject *lines = args[0], *path = args[1], *split = args[2], *heads = args[3],
             *time_ok = args[4];
    int fast = PyObject_IsTrue(args[5]);
    if (fast < 0)
        return NULL;
    if (!PyList_Check(lines) || !PyDict_Check(heads) || !PyList_Check(args[7]) ||
        !PyList_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError, "push_many: lines, held and matches must be lists, "
                                         "heads a dict");
        return NULL;
    }
    PyObject *last_time = args[6] == Py_None ? NULL : Py_NewRef(args[6]);
    PyObject *held = Py_NewRef(args[7]);
    PyObject *matches = Py_NewRef(args[8]);
    PyObject *held_key = Py_NewRef(args[9]);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    Py_ssize_t n = PyList_GET_SIZE(lines);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        PyObject *text;
        if (Py_IS_TYPE(line, l->line_type)) {
            text = Py_NewRef(SLOT(line, l->line_text));
        } else {
            text = PyObject_GetAttrString(line, "text");
            if (text == NULL)
                goto fail;
        }
        if (!PyUnicode_Check(text)) {
            Py_DECREF(text);
            PyErr_SetString(PyExc_TypeError, "a line's text must be a str");
            goto fail;
        }
        if (PyUnicode_GET_LENGTH(text) > 0 && PyUnicode_READ_CHAR(text, 0) == '\t') {
            Py_DECREF(text);
            if (PyList_GET_SIZE(held)) {
                if (PyList_Append(held, line) < 0 || PyList_Append(matches, Py_None) < 0)
                    goto fail;
            } else if (emit_single(l, out, path, line) < 0) {
                goto fail;
            }
            continue;
        }
        PyObject *m = split_line(text, split, heads, time_ok, fast, &last_time);
        Py_DECREF(text);
        if (m == NULL)
            goto fail;
        if (m == Py_None) {
            Py_DECREF(m);
            if (PyList_GET_SIZE(held)) {
                if (emit_held(l, out, path, held, matches) < 0)
                    goto fail;
                Py_SETREF(held, PyList_New(0));
                Py_SETREF(matches, PyList_New(0));
                Py_SETREF(held_key, Py_NewRef(Py_None));
                if (held == NULL || matches == NULL)
                    goto fail;
            }
            if (emit_single(l, out, path, line) < 0)
                goto fail;
            continue;
        }
        if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) != 3) {
            Py_DECREF(m);
            PyErr_SetString(PyExc_TypeError, "the splitter must give (head, time, message)");
            goto fail;
        }
        PyObject *head = PyTuple_GET_ITEM(m, 0);
        PyObject *key, *severity;
        if (Py_IS_TYPE(head, l->head_type)) {
            key = Py_NewRef(SLOT(head, l->head_key));
            severity = Py_NewRef(SLOT(head, l->head_severity));
        } else {
            key = PyObject_GetAttrString(head, "key");
            severity = key ? PyObject_GetAttrString(head, "severity") : NULL;
            if (severity == NULL) {
                Py_XDECREF(key);
                Py_DECREF(m);
                goto fail;
            }
        }
        if (PyList_GET_SIZE(held)) {
            int attached = PySet_Contains(l->attached, severity);
            int same = attached > 0 ? PyObject_RichCompareBool(key, held_key, Py_EQ) : 0;
            if (attached < 0 || same < 0) {
                Py_DECREF(key);
                Py_DECREF(severity);
                Py_DECREF(m);
                goto fail;
            }
            if (attached && same) {
                Py_DECREF(key);
                Py_DECREF(severity);
                int rc = PyList_Append(held, line) < 0 || PyList_Append(matches, m) < 0;
                Py_DECREF(m);
                if (rc)
                    goto fail;
                continue;
            }
            if (emit_held(l, out, path, held, matches) < 0) {
                Py_DECREF(key);
                Py_DECREF(severity);
                Py_DECREF(m);
                goto fail;
            }
        }
        Py_DECREF(severity);
        Py_SETREF(held, PyList_New(1));
        Py_SETREF(matches, PyList_New(1));
        Py_SETREF(held_key, key);
        if (held == NULL || matches == NULL) {
            Py_DECREF(m);
            goto fail;
        }
        PyList_SET_ITEM(held, 0, Py_NewRef(line));
        PyList_SET_ITEM(matches, 0, m);
    }
    return Py_BuildValue("(NNNNN)", out, held, matches, held_key,
                         last_time ? last_time : Py_NewRef(Py_None));
fail:
    Py_XDECREF(out);
    Py_XDECREF(held);
    Py_XDECREF(matches);
    Py_XDECREF(held_key);
    Py_XDECREF(last_time);
    return NULL;
}

/* pg_events._last_field for ASCII text: a new reference, Py_None, or NULL on error. */
static PyObject *
last_field(PyObject *payload, const char *s, Py_ssize_t start, Py_ssize_t len)
{
    Py_ssize_t n = len - start;
    if (memchr(s + start, '"', (size_t)n) == NULL)
        return PyUnicode_Substring(payload, start, len);
    if (n < 2 || s[start] != '"' || s[len - 1] != '"')
        return Py_NewRef(Py_None);
    int doubled = 0;
    for (Py_ssize_t i = start + 1; i < len - 1; i++) {
        if (s[i] == '"') {
            if (i + 1 < len - 1 && s[i + 1] == '"') {
                doubled = 1;
                i++;
            } else {
                return Py_NewRef(Py_None);
            }
        }
    }
    PyObject *inner = PyUnicode_Substring(payload, start + 1, len - 1);
    if (inner == NULL || !doubled)
        return inner;
    PyObject *result = PyObject_CallMethod(inner, "replace", "ss", "\"\"", "\"");
    Py_DECREF(inner);
    return result;
}

/* pg_events._event_tags for ASCII ids, without its cache: the frozenset of the record's tags,
 * the template's, stmt:<id>, substmt:<id> and parameters_not_logged. */
static PyObject *
event_tags(PyObject *base_tags, PyObject *stmt_id, PyObject *substmt_id, int logged,
           PyObject *record_tags)
{
    PyObject *tags = PyFrozenSet_New(record_tags);
    if (tags == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(base_tags);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PySet_Add(tags, PyTuple_GET_ITEM(base_tags, i)) < 0)
            goto fail;
    PyObject *stmt = PyUnicode_FromFormat("stmt:%U", stmt_id);
    if (stmt == NULL || PySet_Add(tags, stmt) < 0) {
        Py_XDECREF(stmt);
        goto fail;
    }
    Py_DECREF(stmt);
    PyObject *substmt = PyUnicode_FromFormat("substmt:%U", substmt_id);
    if (substmt == NULL || PySet_Add(tags, substmt) < 0) {
        Py_XDECREF(substmt);
        goto fail;
    }
    Py_DECREF(substmt);
    if (!logged && PySet_Add(tags, s_not_logged_tag) < 0)
        goto fail;
    return tags;
fail:
    Py_DECREF(tags);
    return NULL;
}

/* SqlEnricher.sql_fields's usual case (one relation, a cached plan, no parameter array):
 * a new reference to (action, subjects, columns, unbounded), or Py_None when the Python
 * method must decide, or NULL on error. */
static PyObject *
sql_fields_fast(Lane *l, PyObject *action, PyObject *objects, PyObject *statement,
                PyObject *params)
{
    if (!PyTuple_Check(objects) || PyTuple_GET_SIZE(objects) > 1 || !PyTuple_Check(params))
        return Py_NewRef(Py_None);
    PyObject *plans = PyObject_GetAttr(l->sql, s_plans);
    if (plans == NULL)
        return NULL;
    if (!PyDict_CheckExact(plans)) {
        Py_DECREF(plans);
        return Py_NewRef(Py_None);
    }
    PyObject *key = PyTuple_Pack(2, statement,
                                 PyTuple_GET_SIZE(objects) ? PyTuple_GET_ITEM(objects, 0)
                                                           : Py_None);
    if (key == NULL) {
        Py_DECREF(plans);
        return NULL;
    }
    PyObject *plan = PyDict_GetItemWithError(plans, key); /* borrowed */
    Py_DECREF(key);
    if (plan == NULL) {
        Py_DECREF(plans);
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    }
    Py_INCREF(plan);
    Py_DECREF(plans);
    PyObject *result = NULL, *found = NULL;
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != 4)
        goto python;
    PyObject *refs = PyTuple_GET_ITEM(plan, 0), *obj_unbounded = PyTuple_GET_ITEM(plan, 1),
             *export = PyTuple_GET_ITEM(plan, 2), *columns = PyTuple_GET_ITEM(plan, 3);
    if (refs == l->no_refs) {
        found = Py_NewRef(s_empty_tuple);
    } else {
        if (!PyTuple_Check(refs) || PyTuple_GET_SIZE(refs) != 2)
            goto python;
        PyObject *values = PyTuple_GET_ITEM(refs, 0), *places = PyTuple_GET_ITEM(refs, 1);
        if (!PyTuple_Check(values) || PyTuple_GET_SIZE(values) != 0 || !PyTuple_Check(places) ||
            PyTuple_GET_SIZE(places) != 1)
            goto python; /* bind_parameters decides */
        Py_ssize_t n = PyLong_AsSsize_t(PyTuple_GET_ITEM(places, 0));
        if (n == -1 && PyErr_Occurred())
            goto done;
        if (n < 1 || n > PyTuple_GET_SIZE(params)) {
            found = Py_NewRef(s_empty_tuple);
        } else {
            PyObject *raw = PyTuple_GET_ITEM(params, n - 1);
            if (!PyUnicode_Check(raw))
                goto python;
            Py_ssize_t rn = PyUnicode_GET_LENGTH(raw);
            if (rn >= 1 && PyUnicode_READ_CHAR(raw, 0) == '{' &&
                PyUnicode_READ_CHAR(raw, rn - 1) == '}')
                goto python; /* an array parameter: bind_parameters */
            found = rn ? PyTuple_Pack(1, raw) : Py_NewRef(s_empty_tuple);
            if (found == NULL)
                goto done;
        }
    }
    int row_action = PySet_Contains(l->row_actions, action);
    int obj_unb = PyObject_IsTrue(obj_unbounded);
    int is_export = PyObject_IsTrue(export);
    if (row_action < 0 || obj_unb < 0 || is_export < 0)
        goto done;
    /* found holds at most one id here: no duplicates to drop */
    result = PyTuple_Pack(4, (is_export && action == l->action_read) ? l->action_export : action,
                          found, columns, (obj_unb && row_action) ? Py_True : Py_False);
    goto done;
python:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(found);
    Py_DECREF(plan);
    return result;
}

/* pg_events.decode_parameters for an ASCII field without quotes (the usual one): a new
 * reference to the values, or Py_None when the Python function must decide. */
static PyObject *
split_parameters(PyObject *raw)
{
    Py_ssize_t len;
    const char *s = ascii_data(raw, &len);
    if (s == NULL || memchr(s, '"', (size_t)len) != NULL || (len > 0 && s[0] == '<'))
        return Py_NewRef(Py_None);
    Py_ssize_t count = 1;
    for (Py_ssize_t i = 0; i < len; i++)
        count += s[i] == ',';
    PyObject *values = PyTuple_New(count);
    if (values == NULL)
        return NULL;
    Py_ssize_t start = 0, item = 0;
    for (Py_ssize_t i = 0; i <= len; i++) {
        if (i == len || s[i] == ',') {
            PyObject *value = PyUnicode_Substring(raw, start, i);
            if (value == NULL) {
                Py_DECREF(values);
                return NULL;
            }
            PyTuple_SET_ITEM(values, item++, value);
            start = i + 1;
        }
    }
    return values;
}

/* lane.audit_line(record, store, enricher, time_cache, time_get) -> event or None:
 * PgauditStderrFormat._audit_line with an enricher (the event built already enriched). */
static PyObject *
audit_line(Lane *l, PyObject *record, PyObject *store, PyObject *enricher, PyObject *time_cache,
           PyObject *time_dict)
{
    if (!Py_IS_TYPE(record, l->matched_type))
        Py_RETURN_NONE;
    PyObject *lines = SLOT(record, l->rec_lines);
    PyObject *matches = SLOT(record, l->rec_matches);
    if (!PyTuple_Check(lines) || PyTuple_GET_SIZE(lines) != 1 || !PyTuple_Check(matches) ||
        PyTuple_GET_SIZE(matches) != 1)
        Py_RETURN_NONE;
    PyObject *first = PyTuple_GET_ITEM(lines, 0);
    PyObject *m = PyTuple_GET_ITEM(matches, 0);
    if (!Py_IS_TYPE(first, l->line_type) || !PyTuple_Check(m) || PyTuple_GET_SIZE(m) != 3 ||
        !Py_IS_TYPE(PyTuple_GET_ITEM(m, 0), l->head_type) || !PyDict_Check(time_dict))
        return PyObject_CallFunctionObjArgs(l->audit_line_py, record, store, enricher, NULL);
    if (SLOT(first, l->line_truncated) != Py_False ||
        SLOT(first, l->line_decode_errors) != Py_False)
        Py_RETURN_NONE;
    PyObject *head = PyTuple_GET_ITEM(m, 0), *time_text = PyTuple_GET_ITEM(m, 1),
             *message = PyTuple_GET_ITEM(m, 2);
    PyObject *severity = SLOT(head, l->head_severity);
    if (!PyUnicode_Check(severity) || PyUnicode_Compare(severity, s_log) != 0)
        Py_RETURN_NONE;
    Py_ssize_t mlen;
    const char *ms = ascii_data(message, &mlen);
    if (ms == NULL)
        return PyObject_CallFunctionObjArgs(l->audit_line_py, record, store, enricher, NULL);
    if (mlen < 7 || memcmp(ms, "AUDIT: ", 7) != 0)
        Py_RETURN_NONE;

    PyObject *payload = NULL, *position = NULL, *tpl = NULL, *stmt_id = NULL,
             *substmt_id = NULL, *params = NULL, *logged = NULL, *tags = NULL, *fields = NULL,
             *person = NULL, *event = NULL, *when = NULL;
    when = PyDict_GetItemWithError(time_dict, time_text);
    if (when != NULL) {
        Py_INCREF(when);
    } else {
        if (PyErr_Occurred())
            goto done;
        when = PyObject_CallOneArg(time_cache, time_text);
        if (when == NULL)
            goto done;
    }
    {
        PyObject *offset = SLOT(first, l->line_offset), *end = SLOT(first, l->line_end);
        PyObject *length = PyNumber_Subtract(end, offset);
        if (length == NULL)
            goto done;
        PyObject *values[5] = {SLOT(record, l->rec_path), offset, SLOT(first, l->line_no),
                               length, s_empty_str};
        position = build((Builder *)l->position_builder, values);
        Py_DECREF(length);
        if (position == NULL)
            goto done;
    }
    payload = PyUnicode_Substring(message, 7, mlen);
    if (payload == NULL)
        goto done;
    const char *s = ms + 7;
    Py_ssize_t len = mlen - 7;
    PyObject *record_tags = SLOT(head, l->head_tags);

    Py_ssize_t i1 = find_char(s, len, ',', 0);
    Py_ssize_t i2 = find_char(s, len, ',', i1 + 1);
    Py_ssize_t i3 = find_char(s, len, ',', i2 + 1);
    Py_ssize_t k = (len > 0 && s[len - 1] == '"') ? rfind_sub(s, len, ",\"", 2)
                                                  : rfind_sub(s, len, ",", 1);
    if (0 < i1 && i1 < i2 && i2 < i3 && i3 < k) {
        PyObject *a = PyUnicode_Substring(payload, 0, i1);
        PyObject *b = a ? PyUnicode_Substring(payload, i3 + 1, k) : NULL;
        PyObject *key = b ? PyTuple_Pack(2, a, b) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(b);
        if (key == NULL)
            goto done;
        tpl = PyDict_GetItemWithError(l->fast, key);
        Py_DECREF(key);
        if (tpl == NULL && PyErr_Occurred())
            goto done;
        if (tpl != NULL) {
            Py_INCREF(tpl);
            PyObject *raw;
            if (len - (k + 1) == 6 && memcmp(s + k + 1, "<none>", 6) == 0)
                raw = Py_NewRef(s_none_text);
            else
                raw = last_field(payload, s, k + 1, len);
            if (raw == NULL)
                goto done;
            if (raw == Py_None || !all_digits(s, i1 + 1, i2) || !all_digits(s, i2 + 1, i3)) {
                Py_CLEAR(tpl);
            } else {
                stmt_id = PyUnicode_Substring(payload, i1 + 1, i2);
                substmt_id = PyUnicode_Substring(payload, i2 + 1, i3);
                if (stmt_id == NULL || substmt_id == NULL) {
                    Py_DECREF(raw);
                    goto done;
                }
                if (raw == s_none_text) {
                    params = Py_NewRef(s_empty_tuple);
                    logged = Py_NewRef(Py_True);
                } else if ((params = split_parameters(raw)) != Py_None) {
                    if (params == NULL) {
                        Py_DECREF(raw);
                        goto done;
                    }
                    logged = Py_NewRef(Py_True);
                } else {
                    Py_CLEAR(params);
                    PyObject *decoded = PyObject_CallOneArg(l->decode_parameters, raw);
                    if (decoded == NULL || !PyTuple_Check(decoded) ||
                        PyTuple_GET_SIZE(decoded) != 2) {
                        if (decoded != NULL)
                            PyErr_SetString(PyExc_TypeError, "decode_parameters: bad result");
                        Py_XDECREF(decoded);
                        Py_DECREF(raw);
                        goto done;
                    }
                    params = Py_NewRef(PyTuple_GET_ITEM(decoded, 0));
                    logged = Py_NewRef(PyTuple_GET_ITEM(decoded, 1));
                    Py_DECREF(decoded);
                }
            }
            Py_DECREF(raw);
        }
    }
    if (tpl == NULL) {
        Py_CLEAR(stmt_id);
        Py_CLEAR(substmt_id);
        PyObject *general = PyObject_CallFunction(l->general_fields, "OOnnnn", payload,
                                                  record_tags, i1, i2, i3, k);
        if (general == NULL)
            goto done; /* a ParseFailure propagates to the Python caller */
        if (!PyTuple_Check(general) || PyTuple_GET_SIZE(general) != 5) {
            Py_DECREF(general);
            PyErr_SetString(PyExc_TypeError, "_general_fields: bad result");
            goto done;
        }
        tpl = Py_NewRef(PyTuple_GET_ITEM(general, 0));
        stmt_id = Py_NewRef(PyTuple_GET_ITEM(general, 1));
        substmt_id = Py_NewRef(PyTuple_GET_ITEM(general, 2));
        params = Py_NewRef(PyTuple_GET_ITEM(general, 3));
        logged = Py_NewRef(PyTuple_GET_ITEM(general, 4));
        Py_DECREF(general);
    }
    if (!PyTuple_Check(tpl) || PyTuple_GET_SIZE(tpl) != 5) {
        PyErr_SetString(PyExc_TypeError, "bad statement template");
        goto done;
    }
    PyObject *action = PyTuple_GET_ITEM(tpl, 0), *objects = PyTuple_GET_ITEM(tpl, 1),
             *command = PyTuple_GET_ITEM(tpl, 2), *statement = PyTuple_GET_ITEM(tpl, 3),
             *base_tags = PyTuple_GET_ITEM(tpl, 4);
    {
        PyObject *tag_key = PyTuple_Pack(5, base_tags, stmt_id, substmt_id, logged, record_tags);
        if (tag_key == NULL)
            goto done;
        tags = PyDict_GetItemWithError(l->tag_cache, tag_key);
        if (tags != NULL) {
            Py_INCREF(tags);
        } else if (!PyErr_Occurred()) {
            if (PyTuple_Check(base_tags) && PyTuple_Check(record_tags) &&
                PyUnicode_Check(stmt_id) && PyUnicode_Check(substmt_id) &&
                (logged == Py_True || logged == Py_False)) {
                tags = event_tags(base_tags, stmt_id, substmt_id, logged == Py_True,
                                  record_tags);
                if (tags != NULL) {
                    if (PyDict_GET_SIZE(l->tag_cache) >= CACHE_LIMIT)
                        PyDict_Clear(l->tag_cache);
                    if (PyDict_SetItem(l->tag_cache, tag_key, tags) < 0)
                        Py_CLEAR(tags);
                }
            } else {
                tags = PyObject_CallOneArg(l->event_tags, tag_key);
            }
        }
        Py_DECREF(tag_key);
        if (tags == NULL)
            goto done;
    }
    PyObject *user = SLOT(head, l->head_user);
    PyObject *actor = user == Py_None ? s_empty_str : user;
    if (!PyUnicode_Check(actor) || PyUnicode_GET_LENGTH(actor) == 0)
        actor = s_empty_str;

    /* the enricher's bound methods, fetched once per enricher */
    if (l->enricher != enricher) {
        PyObject *sql = PyObject_GetAttrString(enricher, "sql");
        PyObject *sql_fields = sql ? PyObject_GetAttrString(sql, "sql_fields") : NULL;
        PyObject *person_of = sql_fields ? PyObject_GetAttrString(enricher, "person_of") : NULL;
        if (person_of == NULL) {
            Py_XDECREF(sql_fields);
            Py_XDECREF(sql);
            goto done;
        }
        Py_XSETREF(l->sql_fields, sql_fields);
        Py_XSETREF(l->sql, sql);
        Py_XSETREF(l->person_of, person_of);
        Py_XSETREF(l->enricher, Py_NewRef(enricher));
        PyDict_Clear(l->no_param_fields);
    }
    PyObject *subjects = s_empty_tuple, *columns = s_empty_tuple, *unbounded = Py_False;
    if (statement != Py_None && PyObject_IsTrue(statement)) {
        int cacheable = PyTuple_Check(params) && PyTuple_GET_SIZE(params) == 0;
        if (cacheable) {
            fields = PyDict_GetItemWithError(l->no_param_fields, tpl);
            if (fields != NULL)
                Py_INCREF(fields);
            else if (PyErr_Occurred())
                goto done;
        }
        if (fields == NULL && !cacheable) {
            fields = sql_fields_fast(l, action, objects, statement, params);
            if (fields == NULL)
                goto done;
            if (fields == Py_None)
                Py_CLEAR(fields);
        }
        if (fields == NULL) {
            PyObject *call_args[4] = {action, objects, statement, params};
            fields = PyObject_Vectorcall(l->sql_fields, call_args, 4, NULL);
            if (fields == NULL)
                goto done;
            if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != 4) {
                PyErr_SetString(PyExc_TypeError, "sql_fields: bad result");
                goto done;
            }
            if (cacheable) {
                if (PyDict_GET_SIZE(l->no_param_fields) >= CACHE_LIMIT)
                    PyDict_Clear(l->no_param_fields);
                if (PyDict_SetItem(l->no_param_fields, tpl, fields) < 0)
                    goto done;
            }
        }
        action = PyTuple_GET_ITEM(fields, 0);
        subjects = PyTuple_GET_ITEM(fields, 1);
        columns = PyTuple_GET_ITEM(fields, 2);
        unbounded = PyTuple_GET_ITEM(fields, 3);
    }
    person = PyObject_CallOneArg(l->person_of, actor);
    if (person == NULL)
        goto done;
    {
        PyObject *values[19] = {
            when, store, actor, action, position, objects, subjects, columns, person,
            SLOT(head, l->head_client), SLOT(head, l->head_application),
            SLOT(head, l->head_database), SLOT(head, l->head_session), command, statement,
            params, unbounded, Py_None, tags};
        event = build((Builder *)l->event_builder, values);
    }
done:
    Py_XDECREF(when);
    Py_XDECREF(position);
    Py_XDECREF(payload);
    Py_XDECREF(tpl);
    Py_XDECREF(stmt_id);
    Py_XDECREF(substmt_id);
    Py_XDECREF(params);
    Py_XDECREF(logged);
    Py_XDECREF(tags);
    Py_XDECREF(fields);
    Py_XDECREF(person);
    return event;
}

static PyObject *
lane_audit_line(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "audit_line takes 5 arguments");
        return NULL;
    }
    return audit_line(l, args[0], args[1], args[2], args[3], args[4]);
}

/* One event of lane.run: counted, the newest time kept, detected. 0, or -1 on error. */
static int
run_event(PyObject *event, PyObject *detect, PyObject *findings, Py_ssize_t *count,
          PyObject **newest)
{
    *count += 1;
    PyObject *time = PyObject_GetAttrString(event, "time");
    if (time == NULL)
        return -1;
    if (*newest == Py_None) {
        Py_SETREF(*newest, time);
    } else {
        int later = PyObject_RichCompareBool(time, *newest, Py_GT);
        if (later < 0) {
            Py_DECREF(time);
            return -1;
        }
        if (later)
            Py_SETREF(*newest, time);
        else
            Py_DECREF(time);
    }
    PyObject *found = PyObject_CallOneArg(detect, event);
    if (found == NULL)
        return -1;
    int rc = 0;
    if (PyList_Check(found)) {
        if (PyList_GET_SIZE(found)) {
            Py_ssize_t end = PyList_GET_SIZE(findings);
            rc = PyList_SetSlice(findings, end, end, found);
        }
    } else {
        PyErr_SetString(PyExc_TypeError, "detect must return a list");
        rc = -1;
    }
    Py_DECREF(found);
    return rc;
}

/* lane.run(records, store, enricher, time_cache, time_dict, parse_rest, detect, findings,
 *          failures) -> (events, newest time or None): Pipeline._process for this format.
 * Each record is parsed (audit_line, else parse_rest(record, store, enricher), which gives a
 * list of events or a failure) and its events detected at once, while they are in the CPU's
 * cache; findings are appended to ``findings``, failures as (record, failure). */
static PyObject *
lane_run(Lane *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "run takes 9 arguments");
        return NULL;
    }
    PyObject *records = args[0], *store = args[1], *enricher = args[2], *time_cache = args[3],
             *time_dict = args[4], *parse_rest = args[5], *detect = args[6],
             *findings = args[7], *failures = args[8];
    if (!PyList_Check(records) || !PyList_Check(findings) || !PyList_Check(failures)) {
        PyErr_SetString(PyExc_TypeError, "records, findings and failures must be lists");
        return NULL;
    }
    Py_ssize_t count = 0;
    PyObject *newest = Py_NewRef(Py_None);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = Py_NewRef(PyList_GET_ITEM(records, i));
        PyObject *event = audit_line(l, record, store, enricher, time_cache, time_dict);
        if (event == NULL) {
            /* a ParseFailure (or another error): the Python path decides, and raises again
               what is not a parse failure; KeyboardInterrupt and the like go up now */
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(record);
                goto fail;
            }
            PyErr_Clear();
        } else if (event != Py_None) {
            int rc = run_event(event, detect, findings, &count, &newest);
            Py_DECREF(event);
            Py_DECREF(record);
            if (rc < 0)
                goto fail;
            continue;
        } else {
            Py_DECREF(event);
        }
        PyObject *parsed = PyObject_CallFunctionObjArgs(parse_rest, record, store, enricher, NULL);
        if (parsed == NULL) {
            Py_DECREF(record);
            goto fail;
        }
        int rc = 0;
        if (PyList_Check(parsed)) {
            for (Py_ssize_t j = 0; rc == 0 && j < PyList_GET_SIZE(parsed); j++) {
                PyObject *each = Py_NewRef(PyList_GET_ITEM(parsed, j));
                rc = run_event(each, detect, findings, &count, &newest);
                Py_DECREF(each);
            }
        } else {
            PyObject *pair = PyTuple_Pack(2, record, parsed);
            rc = pair == NULL ? -1 : PyList_Append(failures, pair);
            Py_XDECREF(pair);
        }
        Py_DECREF(parsed);
        Py_DECREF(record);
        if (rc < 0)
            goto fail;
    }
    return Py_BuildValue("(nN)", count, newest);
fail:
    Py_DECREF(newest);
    return NULL;
}

static PyMethodDef lane_methods[] = {
    {"run", (PyCFunction)(void (*)(void))lane_run, METH_FASTCALL,
     "Pipeline._process for pgaudit stderr records: parse and detect."},
    {"push_many", (PyCFunction)(void (*)(void))lane_push_many, METH_FASTCALL,
     "PgStderrFramer._push_many over a list of lines."},
    {"audit_line", (PyCFunction)(void (*)(void))lane_audit_line, METH_FASTCALL,
     "PgauditStderrFormat._audit_line with an enricher."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "breachwatch._speedups.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The pgaudit stderr framer's and parser's common case, in C.",
    .tp_methods = lane_methods,
    .tp_new = lane_new,
};

static PyMethodDef module_methods[] = {
    {"lines_of", (PyCFunction)(void (*)(void))lines_of, METH_FASTCALL,
     "lines_of(raws, has_cr, offset, line_no, max_line_bytes, line_builder) -> "
     "(lines, offset, line_no)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "breachwatch._speedups",
    "The per-line hot path of the pgaudit stderr reader, in C (see the Python twins).", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&BuilderType) < 0 || PyType_Ready(&LaneType) < 0)
        return NULL;
    s_none_text = PyUnicode_InternFromString("<none>");
    s_log = PyUnicode_InternFromString("LOG");
    s_empty_str = PyUnicode_InternFromString("");
    s_empty_tuple = PyTuple_New(0);
    s_not_logged_tag = PyUnicode_InternFromString("parameters_not_logged");
    s_plans = PyUnicode_InternFromString("_plans");
    if (!s_not_logged_tag || !s_plans || !s_none_text || !s_log || !s_empty_str || !s_empty_tuple)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Builder", (PyObject *)&BuilderType) < 0 ||
        PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
