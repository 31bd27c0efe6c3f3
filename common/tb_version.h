/* tb_version.h - the toolkit's version (git describe), compiled into one
 * object only, so that a new version rebuilds that object and not the tree. */
#ifndef TB_VERSION_H
#define TB_VERSION_H

const char *tb_version(void);
#define TB_VERSION tb_version()

#endif
